"""CrisisDetector: routes messages with self-harm or suicidal intent to the scripted crisis responses.

When the engine flags a crisis, the component sets the entity ``crisis`` (fills the ``crisis``
slot) and overrides the intent with ``crisis`` (confidence 1.0), so the rule
``crisis → utter_crisis_support, utter_crisis_resources`` fires whatever the classifier thought.
Place it after the intent classifiers (and the FallbackClassifier). When the engine is down the
``crisis`` intent of the NLU data is the safety net.
"""

from __future__ import annotations

from typing import Any, Dict, Text

from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.shared.nlu.constants import INTENT, INTENT_NAME_KEY, INTENT_RANKING_KEY, PREDICTED_CONFIDENCE_KEY
from rasa.shared.nlu.training_data.message import Message

from agent.engine_component import EnginePerceptionComponent, add_entity

CRISIS_INTENT = "crisis"


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER], is_trainable=False)
class CrisisDetector(EnginePerceptionComponent):
    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        return {**EnginePerceptionComponent.get_default_config(), "intent": CRISIS_INTENT}

    def annotate(self, message: Message, perceived: Dict[Text, Any]) -> None:
        if not perceived.get("crisis"):
            return
        score = float(perceived.get("crisis_score", 1.0))
        add_entity(message, "crisis", True, score, self.__class__.__name__)
        previous = message.get(INTENT) or {}
        intent = {INTENT_NAME_KEY: self.config["intent"], PREDICTED_CONFIDENCE_KEY: 1.0}
        ranking = [intent] + [r for r in message.get(INTENT_RANKING_KEY, []) if r.get(INTENT_NAME_KEY) != intent[INTENT_NAME_KEY]]
        message.set(INTENT, intent, add_to_output=True)
        message.set(INTENT_RANKING_KEY, ranking, add_to_output=True)
        message.set("crisis_override", {"previous_intent": previous.get(INTENT_NAME_KEY), "reasons": perceived.get("crisis_reasons", [])}, add_to_output=True)
