"""StoryRouter: a story going on is not a request.

In an empathetic assistant nearly every message continues what the user is telling. The intent
classifier, trained on short requests, reads some story turns as requests — confidently: DIET
gave "the restaurant I work at is closing for good" out_of_scope at 1.00, "I was a line cook
there for 3 years" ask_resources at 0.997 — and the user gets a template instead of a listener.
Confidence cannot tell them apart, so this component uses two cues instead and changes the
intent to ``share_feeling`` when

* the message is a **first-person statement** (I / my / we … and no question mark) read as
  ``out_of_scope``, or as ``ask_resources`` without asking for anything ("ok, I'll call the
  line"): people ask for tasks and for numbers, they tell about themselves; or
* the message is **not in words the classifier was trained on**: mostly letters outside the Latin
  alphabet (Arabic, Hebrew, Chinese, Russian, Hindi …) or no letters at all but emoji ("😭😭😭💔"),
  read as ``out_of_scope``, ``ask_help``, ``greet``, ``bot_challenge``, ``affirm`` or ``deny``: a
  feeling in another script or in pictures is for the listener, not the help text; or
* the conversation is **mid-story** (an earlier user message of this session was
  ``share_feeling``, ``nlu_fallback`` or ``crisis``; Rasa passes the tracker to ``process``) and the intent
  is one of ``mid_story`` (default out_of_scope, greet, ask_help, bot_challenge) below its
  confidence limit (default 1.01: always), or ask_resources without a help-line word.

A ``thank`` that goes on with the story ("thanks. i think he'd have really liked Tom": four
words or more beside the thanks and its usual company, :func:`story_after_thanks`) is the story too;
a plain thank-you keeps its intent and its template. It never touches ``crisis`` (the crisis
detector runs after it and wins) or ``goodbye``. What it did is in ``parse_data["story_router"]``.
Place it after the intent classifiers and before ``agent.crisis_detector.CrisisDetector``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Dict, List, Optional, Text

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.shared.core.events import SessionStarted, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.nlu.constants import INTENT, INTENT_NAME_KEY, INTENT_RANKING_KEY, PREDICTED_CONFIDENCE_KEY
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

STORY_INTENTS = ("share_feeling", "nlu_fallback", "crisis")
FIRST_PERSON = re.compile(r"\b(?:i|i'm|im|i've|ive|i'd|i'll|my|me|mine|we|we're|our|us)\b", re.IGNORECASE)
#: what the classifier reads a message it cannot read as (a foreign script, emoji alone)
UNREADABLE_AS = ("out_of_scope", "ask_help", "greet", "bot_challenge", "affirm", "deny")
#: a message that asks for the resources. A number is asked for ("the number again", "I need the
#: number", "number please"), not merely mentioned: "police gave me a crime number" (DIET:
#: ask_resources, full stack, heldout_h.jsonl) and "he blocked my number" are stories.
ASKS_FOR_RESOURCES = re.compile(
    r"\?|^\W*(?:the |a |any |your )?numbers?\W*$|"
    r"\b(?:help|hlep|again|give me|send me|what'?s the|hotline|helpline|lifeline|crisis line|988|samaritans|"
    r"resources?|who (?:can|do|should) i|where (?:can|do|should) i|"
    r"(?:need|want|like|have|get|text|call)\b.{0,24}\bnumbers?|numbers? (?:please|pls|plz))\b", re.IGNORECASE)


#: the thanks itself and what usually goes with it ("thank you so much for listening", "cheers, that
#: helps", "haha yes"): what is left after these is the story going on
THANKS = re.compile(
    # the thanks, and what it is for
    r"\b(?:thank\s+(?:you|u|ya)|thanks?|thx|ty|cheers)\b(?:\s+(?:so|very|a\s+lot|a\s+bunch|again|much|heaps|loads))*"
    r"(?:\s+for\s+(?:listening|that|this|everything|asking|the\s+\w+|your\s+\w+|being\s+(?:here|there)|"
    r"\w+ing(?:\s+(?:me|to\s+me))?(?:\s+out)?|"
    r"(?:the\s+)?(?:chat|help|advice|tips?|support))\b)?|"
    # its usual company
    r"\b(?:haha+|lol|yes|yeah|yep|ok(?:ay)?|i\s+will|will\s+do|"
    r"(?:that|it|this)\s+(?:really\s+)?(?:help(?:s|ed)(?:\s+(?:me\s+)?to\s+[^.!?]*)?|means\s+a\s+lot)|"
    r"appreciate\s+(?:it|you(?:\s+\w+ing)?)|"
    r"(?:that\s+was|that'?s|you'?re|you\s+are)\s+(?:so\s+|very\s+|really\s+)?(?:kind|nice|sweet|lovely|helpful)(?:\s+of\s+you)?|"
    r"(?:i'?m|i\s+am)\s+(?:so\s+|really\s+|very\s+)?grateful(?:\s+for\s+(?:this|that|the|you|your)(?:\s+\w+)?)?|"
    r"you'?re\s+(?:the\s+best|kind|right)|really|so|much)\b", re.IGNORECASE)
#: words left after :data:`THANKS` from which a thank-you carries a story on
STORY_AFTER_THANKS_WORDS = 4


def story_after_thanks(text: Text) -> bool:
    """Whether a message read as ``thank`` goes on with the story ("thanks. i think he'd have really
    liked Tom", full stack, heldout_i.jsonl — it got "Of course. I'm always happy to listen."):
    at least :data:`STORY_AFTER_THANKS_WORDS` words beside the thanks and its usual company."""
    rest = THANKS.sub(" ", text)
    return len(re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", rest)) >= STORY_AFTER_THANKS_WORDS


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER], is_trainable=False)
class StoryRouter(GraphComponent):
    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        return {
            "target": "share_feeling",
            "mid_story": {"out_of_scope": 1.01, "greet": 1.01, "ask_help": 1.01, "bot_challenge": 1.01},
        }

    def __init__(self, config: Dict[Text, Any]) -> None:
        self.config = {**self.get_default_config(), **config}

    @classmethod
    def create(cls, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource,
               execution_context: ExecutionContext) -> GraphComponent:
        return cls(config)

    def process_training_data(self, training_data: TrainingData) -> TrainingData:
        return training_data

    @staticmethod
    def mid_story(tracker: Optional[DialogueStateTracker]) -> bool:
        """Whether an earlier user message of the current session was part of a story."""
        if tracker is None:
            return False
        story = False
        for event in tracker.events:
            if isinstance(event, SessionStarted):
                story = False
            elif isinstance(event, UserUttered) and (event.intent or {}).get(INTENT_NAME_KEY) in STORY_INTENTS:
                story = True
        return story

    @staticmethod
    def script(text: Text) -> Text:
        """``"latin"``, ``"other"`` (most letters outside the Latin alphabet), ``"emoji"`` (no
        letters, at least one pictograph) or ``"none"`` (digits, punctuation, nothing)."""
        letters = [c for c in text if c.isalpha()]
        if letters:
            latin = sum(1 for c in letters if "LATIN" in unicodedata.name(c, ""))
            return "latin" if latin * 2 >= len(letters) else "other"
        if any(unicodedata.category(c) == "So" for c in text):
            return "emoji"
        return "none"

    @classmethod
    def reason(cls, name: Optional[Text], confidence: float, text: Text, mid_story: bool, limits: Dict[Text, float]) -> Optional[Text]:
        """Why this reading is the story going on (None: keep the intent)."""
        if name == "thank":
            return "story after thanks" if story_after_thanks(text) else None
        statement = bool(FIRST_PERSON.search(text)) and "?" not in text
        if name == "ask_resources" and ASKS_FOR_RESOURCES.search(text):
            return None  # asking for the numbers: always answered with them
        if name in ("out_of_scope", "ask_resources") and statement:
            return "first-person statement"
        script = cls.script(text) if name in UNREADABLE_AS else "latin"
        if script in ("other", "emoji"):
            return "another script" if script == "other" else "emoji"
        if mid_story and (name == "ask_resources" or (name in limits and confidence < float(limits[name]))):
            return "mid-story"
        return None

    def process(self, messages: List[Message], tracker: Optional[DialogueStateTracker] = None) -> List[Message]:
        story = self.mid_story(tracker)
        limits: Dict[Text, float] = dict(self.config["mid_story"])
        target = self.config["target"]
        for message in messages:
            intent = message.get(INTENT) or {}
            name, confidence = intent.get(INTENT_NAME_KEY), float(intent.get(PREDICTED_CONFIDENCE_KEY) or 0.0)
            why = self.reason(name, confidence, message.get("text") or "", story, limits)
            if why:
                new = {INTENT_NAME_KEY: target, PREDICTED_CONFIDENCE_KEY: 1.0}
                ranking = [new] + [r for r in message.get(INTENT_RANKING_KEY, []) if r.get(INTENT_NAME_KEY) != target]
                message.set(INTENT, new, add_to_output=True)
                message.set(INTENT_RANKING_KEY, ranking, add_to_output=True)
                message.set("story_router", {"previous_intent": name, "confidence": round(confidence, 4), "reason": why},
                            add_to_output=True)
        return messages
