"""CauseExtractor: which utterances of the conversation (and which words) caused the emotion.

RECCON-style causal emotion entailment runs in the engine; this component exposes its answer as
``emotion_causes`` in ``parse_data`` (index into the conversation, text, score, word spans).
"""

from __future__ import annotations

from typing import Any, Dict, Text

from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.shared.nlu.training_data.message import Message

from agent.engine_component import EnginePerceptionComponent


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR], is_trainable=False)
class CauseExtractor(EnginePerceptionComponent):
    def annotate(self, message: Message, perceived: Dict[Text, Any]) -> None:
        message.set("emotion_causes", list(perceived.get("causes") or []), add_to_output=True)
