"""CrisisDetector: routes messages with self-harm or suicidal intent to the scripted crisis responses.

When the engine flags a crisis, the component sets the entity ``crisis`` (fills the ``crisis``
slot) and overrides the intent with ``crisis`` (confidence 1.0), so the rule
``crisis → utter_crisis_support, utter_crisis_resources`` fires whatever the classifier thought.
Place it after the intent classifiers (and the FallbackClassifier). When the engine is down the
``crisis`` intent of the NLU data is the safety net.

When the engine is up, it also keeps that safety net from answering good news with the crisis
script: DIET, trained on a few dozen crisis phrasings, read "gonna try making sauce this weekend,
wish me luck" and "Thinking of spending some of it on a trip to Lisbon" (a quit-smoking story) as
``crisis`` at 0.99+. If the engine perceived the message and did not flag it, the NLU ``crisis``
intent yields to ``demote_to`` (default ``share_feeling``: the listener, whose own safety policy
still applies) unless the engine is concerned (``crisis_concern``: two detectors worried, the NLU
route and its resources stay); what happened is in ``parse_data["crisis_override"]``
(``demoted``). Good news goes to the listener as it is; any other message is marked ``ask``: the
two detectors disagree, so the engine asks the scripted safety question (a "yes" brings the
resources) instead of pasting the resources over "gonna try a rye loaf next" after a bread story
(DIET: crisis 0.999, full stack, heldout_h.jsonl) — recall first, but proportionate.

A message the engine flags **only with the messages before it** (reason ``context-only``: "she's
asleep now" after "I've counted out the pills") also goes to ``demote_to``, never to the crisis rule:
what it needs depends on what was said since, which the engine's safety policy knows (SQL) and
Rasa's rule does not — the crisis already answered → the urgent follow-up with the numbers; the
person said they were misread ("no no I'm fine, I was joking") → back to listening; otherwise the
resources, rendered by the engine. On the crisis route this side accepts only the domain's own
texts, so none of those replies could reach the person there (they got the two paragraphs again).
``parse_data["crisis_override"]`` says ``context_only``.
"""

from __future__ import annotations

from typing import Any, Dict, Text, Tuple

from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.shared.nlu.constants import INTENT, INTENT_NAME_KEY, INTENT_RANKING_KEY, PREDICTED_CONFIDENCE_KEY
from rasa.shared.nlu.training_data.message import Message

from agent.engine_component import EnginePerceptionComponent, add_entity

CRISIS_INTENT = "crisis"
#: the engine's reason for a flag that only the earlier messages raise
#: (empathy_nlg.perception.crisis.CONTEXT_ONLY; this package never imports the engine)
CONTEXT_ONLY = "context-only"


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER], is_trainable=False)
class CrisisDetector(EnginePerceptionComponent):
    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        return {**EnginePerceptionComponent.get_default_config(), "intent": CRISIS_INTENT, "demote_to": "share_feeling"}

    def annotate(self, message: Message, perceived: Dict[Text, Any]) -> None:
        if not perceived.get("crisis"):
            self._demote_good_news(message, perceived)
            return
        previous = message.get(INTENT) or {}
        reasons = perceived.get("crisis_reasons") or []
        target = self.config.get("demote_to")
        if CONTEXT_ONLY in reasons and target:
            # the engine's safety policy decides (urgent follow-up, all-clear or the resources): the listener's route
            confidence = float(previous.get(PREDICTED_CONFIDENCE_KEY) or 0.0)
            _set_intent(message, target, max(confidence, 0.5), drop=(target, self.config["intent"]))
            message.set("crisis_override", {"context_only": True, "previous_intent": previous.get(INTENT_NAME_KEY),
                                            "reasons": reasons}, add_to_output=True)
            return
        score = float(perceived.get("crisis_score", 1.0))
        add_entity(message, "crisis", True, score, self.__class__.__name__)
        _set_intent(message, self.config["intent"], 1.0, drop=(self.config["intent"],))
        message.set("crisis_override", {"previous_intent": previous.get(INTENT_NAME_KEY), "reasons": perceived.get("crisis_reasons", [])}, add_to_output=True)

    def _demote_good_news(self, message: Message, perceived: Dict[Text, Any]) -> None:
        """The NLU ``crisis`` intent → ``demote_to`` when the engine did not flag the message; marked
        ``ask`` (the engine asks the safety question) unless it heard good news without concern."""
        previous = message.get(INTENT) or {}
        target = self.config.get("demote_to")
        if not target or previous.get(INTENT_NAME_KEY) != self.config["intent"] or perceived.get("crisis_concern"):
            return  # the engine is concerned too: two detectors worried, the resources stay
        ask = perceived.get("polarity") != "positive"
        confidence = float(previous.get(PREDICTED_CONFIDENCE_KEY) or 0.0)
        _set_intent(message, target, confidence, drop=(target, previous.get(INTENT_NAME_KEY)))
        reason = ("the engine did not flag it: ask the safety question" if ask
                  else "the engine heard a positive feeling and no crisis or concern")
        message.set("crisis_override", {"demoted": previous.get(INTENT_NAME_KEY), "confidence": confidence,
                                        "reason": reason, "ask": ask},
                    add_to_output=True)


def _set_intent(message: Message, name: Text, confidence: float, drop: Tuple[Any, ...]) -> None:
    """``name`` becomes the message's intent, first in its ranking; the intents in ``drop`` leave the ranking."""
    intent = {INTENT_NAME_KEY: name, PREDICTED_CONFIDENCE_KEY: confidence}
    ranking = [intent] + [r for r in message.get(INTENT_RANKING_KEY, []) if r.get(INTENT_NAME_KEY) not in drop]
    message.set(INTENT, intent, add_to_output=True)
    message.set(INTENT_RANKING_KEY, ranking, add_to_output=True)
