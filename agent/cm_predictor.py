"""CommunicationMechanismPredictor: how the reply should respond (EPITOME's mechanisms).

IMAGINE's "dialogue reaction": P(emotional reaction), P(interpretation), P(exploration) for the
next reply, predicted from the context. Adds the entity ``cm`` (the plan, e.g. ``ER+EX``) and
``cm_probs`` to ``parse_data``.
"""

from __future__ import annotations

from typing import Any, Dict, Text

from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.shared.nlu.training_data.message import Message

from agent.engine_component import EnginePerceptionComponent, add_entity


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR], is_trainable=False)
class CommunicationMechanismPredictor(EnginePerceptionComponent):
    def annotate(self, message: Message, perceived: Dict[Text, Any]) -> None:
        plan = list(perceived.get("cm_plan") or [])
        probs = perceived.get("cm") or {}
        if plan:
            confidence = min(float(probs.get(c, 0.0)) for c in plan)
            add_entity(message, "cm", "+".join(plan), confidence, self.__class__.__name__)
        message.set("cm_probs", probs, add_to_output=True)
