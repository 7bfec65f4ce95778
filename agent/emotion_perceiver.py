"""EmotionPerceiver: the user's emotion (32 EmpatheticDialogues labels) and its polarity.

Adds the entities ``emotion`` (top label, confidence = its probability) and ``polarity``
(MIME's positive/negative group) so the ``emotion`` and ``polarity`` slots fill from them, and
``emotion_ranking`` (top 3) to ``parse_data``.
"""

from __future__ import annotations

from typing import Any, Dict, Text

from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.shared.nlu.training_data.message import Message

from agent.engine_component import EnginePerceptionComponent, add_entity


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR], is_trainable=False)
class EmotionPerceiver(EnginePerceptionComponent):
    def annotate(self, message: Message, perceived: Dict[Text, Any]) -> None:
        probs = perceived.get("emotion_probs") or {}
        emotion = perceived.get("emotion")
        if not emotion:
            return
        add_entity(message, "emotion", emotion, probs.get(emotion, 0.0), self.__class__.__name__)
        add_entity(message, "polarity", perceived.get("polarity"), perceived.get("polarity_prob", 0.0), self.__class__.__name__)
        message.set("emotion_ranking", perceived.get("emotion_top_k", []), add_to_output=True)
