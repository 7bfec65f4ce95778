"""What every perception component shares: its config, the engine client and the single
``/perceive`` call per message.

The first engine-backed component in the pipeline calls ``/perceive`` once with the message and
the conversation so far (from the tracker Rasa passes to ``process``) and stores the answer on the
message under ``empathy`` (``add_to_output=True``: it lands in ``parse_data``, the tracker and SQL).
Every later component reads it from there. When the engine is unreachable the answer is
``{"available": false, "error": …}`` and the components add nothing: the NLU classifier alone
decides, and the turn is never lost.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Text

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.shared.core.events import BotUttered, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.nlu.constants import ENTITIES, TEXT
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from agent.engine_client import EngineClient, EngineUnavailable

log = logging.getLogger(__name__)

EMPATHY_KEY = "empathy"
_CLIENTS: Dict[tuple, EngineClient] = {}


def shared_client(config: Dict[Text, Any]) -> EngineClient:
    """One client (and breaker) per engine URL and settings, shared by all components."""
    key = (config.get("engine_url"), config.get("timeout_s"), config.get("retries"), config.get("cooldown_s"))
    if key not in _CLIENTS:
        _CLIENTS[key] = EngineClient(
            url=config.get("engine_url"),
            timeout_s=config.get("timeout_s", 5.0),
            retries=config.get("retries", 1),
            cooldown_s=config.get("cooldown_s", 10.0),
        )
    return _CLIENTS[key]


def history_from_tracker(tracker: Optional[DialogueStateTracker], max_turns: int) -> List[Dict[str, str]]:
    if tracker is None:
        return []
    turns: List[Dict[str, str]] = []
    for event in tracker.events:
        if isinstance(event, UserUttered) and event.text:
            turns.append({"role": "user", "text": event.text})
        elif isinstance(event, BotUttered) and event.text:
            turns.append({"role": "bot", "text": event.text})
    return turns[-max_turns:] if max_turns > 0 else []


def user_turn_count(tracker: Optional[DialogueStateTracker]) -> int:
    if tracker is None:
        return 0
    return sum(1 for e in tracker.events if isinstance(e, UserUttered))


def add_entity(message: Message, entity: Text, value: Any, confidence: float, extractor: Text) -> None:
    text = message.get(TEXT) or ""
    entities = [e for e in message.get(ENTITIES, []) if e.get("entity") != entity]
    entities.append(
        {
            "entity": entity,
            "value": value,
            "start": 0,
            "end": len(text),
            "confidence_entity": round(float(confidence), 4),
            "extractor": extractor,
        }
    )
    message.set(ENTITIES, entities, add_to_output=True)


class EnginePerceptionComponent(GraphComponent):
    """Base of the components; subclasses implement :meth:`annotate`."""

    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        return {
            "engine_url": None,  # default: $EMPATHY_ENGINE_URL or http://127.0.0.1:5056
            "timeout_s": 5.0,
            "retries": 1,
            "cooldown_s": 10.0,
            "history_turns": 8,
        }

    def __init__(self, config: Dict[Text, Any], name: Text) -> None:
        self.config = {**self.get_default_config(), **config}
        self.name = name
        self.client = shared_client(self.config)

    @classmethod
    def create(
        cls,
        config: Dict[Text, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> GraphComponent:
        return cls(config, execution_context.node_name)

    def process_training_data(self, training_data: TrainingData) -> TrainingData:
        # Nothing to learn on the Rasa side: the engine's models are trained by `empathy-nlg`.
        return training_data

    def perception(self, message: Message, tracker: Optional[DialogueStateTracker]) -> Dict[Text, Any]:
        cached = message.get(EMPATHY_KEY)
        if cached is not None:
            return cached
        text = message.get(TEXT) or ""
        if not text.strip() or text.startswith("/"):
            result: Dict[Text, Any] = {"available": False, "error": "no text to perceive"}
        else:
            try:
                result = self.client.perceive(
                    text,
                    history_from_tracker(tracker, int(self.config["history_turns"])),
                    sender_id=tracker.sender_id if tracker is not None else None,
                    message_id=message.get("message_id"),
                    turn_index=user_turn_count(tracker),
                )
                result["available"] = True
            except EngineUnavailable as exc:
                log.warning("empathy engine unavailable, continuing without perception: %s", exc)
                result = {"available": False, "error": str(exc)}
        message.set(EMPATHY_KEY, result, add_to_output=True)
        return result

    def process(self, messages: List[Message], tracker: Optional[DialogueStateTracker] = None) -> List[Message]:
        for message in messages:
            perceived = self.perception(message, tracker)
            if perceived.get("available"):
                self.annotate(message, perceived)
        return messages

    def annotate(self, message: Message, perceived: Dict[Text, Any]) -> None:  # pragma: no cover
        raise NotImplementedError
