"""Forget what the user told about themselves ("forget what I told you").

The engine remembers persona facts per sender in SQL (``GET/DELETE /users/{sender_id}/persona``).
This action asks it to forget them, clears the ``persona`` slot (the client's session persona, so
it is not remembered again) and confirms with ``utter_persona_forgotten`` — or, when the engine
cannot be reached, says so with ``utter_persona_forget_failed`` (nothing is claimed that did not
happen). The conversation itself (turns, replies, crisis state) is not touched.

The engine's URL and token come from ``EMPATHY_ENGINE_URL`` / ``EMPATHY_NLG_TOKEN`` (``make serve``
sets them for the action server from ``var/engine.token``), as for the agent's components.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Text

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from agent.engine_client import EngineClient, EngineUnavailable

log = logging.getLogger(__name__)


class ActionForgetPersona(Action):
    def __init__(self, client_factory: Optional[Callable[[], Any]] = None) -> None:
        self._client_factory = client_factory or (lambda: EngineClient(timeout_s=10.0, retries=0, cooldown_s=0.0))

    def name(self) -> Text:
        return "action_forget_persona"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[Text, Any]) -> List[EventType]:
        try:
            deleted = self._client_factory().forget_persona(tracker.sender_id)
        except (EngineUnavailable, ValueError) as exc:
            log.warning("could not forget the persona of a sender: %s", exc)
            dispatcher.utter_message(response="utter_persona_forget_failed")
            return []
        log.info("forgot %d persona facts on the user's request", deleted)
        dispatcher.utter_message(response="utter_persona_forgotten")
        return [SlotSet("persona", None)]
