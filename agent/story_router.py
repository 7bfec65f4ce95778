"""StoryRouter: a story going on is not a request.

In an empathetic assistant nearly every message continues what the user is telling. The intent
classifier, trained on short requests, reads some story turns as requests — confidently: DIET
gave "the restaurant I work at is closing for good" out_of_scope at 1.00, "I was a line cook
there for 3 years" ask_resources at 0.997 — and the user gets a template instead of a listener.
Confidence cannot tell them apart, so this component uses two cues instead and changes the
intent to ``share_feeling`` when

* the message is a **first-person statement** (I / my / we … and nothing that asks or orders,
  :data:`REQUEST`) read as
  ``out_of_scope``, or as ``ask_resources`` without asking for anything ("ok, I'll call the
  line"): people ask for tasks and for numbers, they tell about themselves; or
* the message is **not in words the classifier was trained on**: mostly letters outside the Latin
  alphabet (Arabic, Hebrew, Chinese, Russian, Hindi …) or no letters at all but emoji ("😭😭😭💔"),
  read as ``out_of_scope``, ``ask_help``, ``greet``, ``bot_challenge``, ``affirm`` or ``deny``: a
  feeling in another script or in pictures is for the listener, not the help text; or
* the message is **a statement that asks for nothing** ("Priya said yes 💍💍💍" read as
  ``ask_help``, "got the Berlin offer 🎉" and "well the smoke alarm works, so that's something" read
  as ``out_of_scope``, heldout_o/p.jsonl through the full stack): read as ``out_of_scope`` or
  ``ask_help``, in the Latin alphabet, with no question mark, no request word ("help", "please")
  and no opening that asks or orders ("can you", "what", "book", "tell me", …: :data:`REQUEST`,
  which matches every request of those intents in the NLU data — a test checks it). The two
  mistakes are not alike: a story answered "I can't help with that" is dismissed, a request
  answered by the listener gets a kind reply it did not need; or
* the conversation is **mid-story** (an earlier user message of this session was
  ``share_feeling``, ``nlu_fallback`` or ``crisis``; Rasa passes the tracker to ``process``) and the intent
  is one of ``mid_story`` (default out_of_scope, greet, ask_help, bot_challenge) below its
  confidence limit (default 1.01: always), or ask_resources without a help-line word.

A ``thank`` that goes on with the story ("thanks. i think he'd have really liked Tom": four
words or more beside the thanks and its usual company, :func:`story_after_thanks`) is the story too;
a plain thank-you keeps its intent and its template. So are, in the Latin alphabet, a ``greet``
that opens with no greeting or tells three words past it ("took Pepper to the vet this morning",
:func:`story_after_greeting`), a ``goodbye`` said to something of the story or telling five words
past it ("goodbye old house I guess", :func:`story_after_farewell`), and a greet, goodbye or thank
with none of that intent's words in it ("anyway, bus tomorrow" read as ``thank``). Every greeting,
goodbye and thank-you of the NLU data keeps its intent (a test checks it). A ``forget_persona``
with no word of forgetting in it ("I keep reaching for my phone to tell him stuff", DIET 0.91) is
the story, and so is a plain ``affirm``/``deny`` mid-story after an action other than
``utter_empathize``, where no rule of the domain answers it (it got ``utter_default``), and an
``affirm``/``deny`` that tells two words or more beside its yes or no ("Priya said yes 💍💍💍",
:data:`ANSWER`). It never touches
``crisis`` (the crisis detector runs after it and wins). What it did is in
``parse_data["story_router"]``.
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
from rasa.shared.core.events import ActionExecuted, SessionStarted, UserUttered
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

#: a message that asks or orders: a question mark, a request word, or an opening of the kind every
#: ``out_of_scope``/``ask_help`` example of the NLU data has ("what's the weather…", "book me a…",
#: "can you help me", "tell me a joke"); a test checks that each of them matches
REQUEST = re.compile(
    r"\?|\b(?:help|please|pls|plz)\b|\bhow\s+(?:do|does|can|should|would)\b|"
    r"^\W*(?:can|could|would|will|may|should|shall|is|are|am|do|does|what\w*|how\w*|who\w*|where\w*|when\w*|why|which|"
    r"tell|give|show|book|order|play|set|find|write|translate|convert|recommend|fix|solve|search|look|get|make|"
    r"call|send|open|turn|check|explain|define|calculate|remind|schedule|let'?s)\b",
    re.IGNORECASE)
#: intents a statement is read as by mistake (the templates that answer a request)
REQUEST_INTENTS = ("out_of_scope", "ask_help")


def has_pictograph(text: Text) -> bool:
    """Whether the text holds an emoji or another pictograph (Unicode category So)."""
    return any(unicodedata.category(c) == "So" for c in text)


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

#: the words of a greeting, one list for :data:`GREETING` and :data:`GREETING_COMPANY`
HELLO = r"hi+|hello+|helo|hey+|heya|hiya|yo|howdy|greetings|sup|good\s+(?:morning|afternoon|evening|day)|morning|evening"
#: a greeting, where greetings are: at the start of the message ("took Pepper to the vet this
#: morning" is not one, although DIET read it as ``greet``, heldout_j.jsonl's first turn)
GREETING = re.compile(
    rf"^\W*(?:(?:{HELLO}|heyo|wa?s+up|hey\s+hey|hola|hallo|ciao|salut|bonjour)\b|"
    r"(?:nice|good|great|glad)\s+to\s+(?:see|talk|chat)|how\s+(?:are|r)\s+(?:you|u)\b|how'?s\s+it\s+going|"
    r"what'?s\s+up|are\s+you\s+there)", re.IGNORECASE)
#: what goes with a greeting ("hey there, nice to chat again", "hi, it's me again", "how are you?")
GREETING_COMPANY = re.compile(
    rf"\b(?:{HELLO}|"
    r"there|again|friend|bot|buddy|you|it'?s\s+me|me|(?:i'?m|i\s+am)\s+back|"
    r"(?:nice|good|great|glad)\s+to\s+(?:see|talk\s+to|chat\s+(?:with|to)|be\s+back|have\s+you)(?:\s+you)?|"
    r"how\s+(?:are|r)\s+(?:you|u)(?:\s+doing)?(?:\s+today)?|how'?s\s+it\s+going|what'?s\s+up|"
    r"are\s+you\s+there|chat|back|today)\b", re.IGNORECASE)
#: a farewell word, anywhere ("that's all for today, bye")
FAREWELL = re.compile(
    r"\b(?:(?:good\s*)?bye|bye\s+bye|see\s+(?:you|ya|u)|cya|ttyl|farewell|good\s*night|night\s+night|nighty?|gn|"
    r"laters|peace\s+out|adios|ciao|au\s+revoir|"
    r"take\s+care|talk\s+(?:to\s+you\s+)?(?:later|soon|tomorrow|another\s+time)|catch\s+you|"
    r"(?:have\s+to|gotta|got\s+to|need\s+to|must)\s+(?:go|head\s+off|run|log\s+off)|"
    r"(?:i'?m|i\s+am)\s+(?:off|leaving|going\s+to\s+(?:log\s+off|bed|sleep))|log\s+off)\b", re.IGNORECASE)
#: a farewell said *to* something of the story, not to the assistant: "goodbye old house I guess",
#: "bye bye old flat", "said goodbye to the team" (heldout_j.jsonl: the first got ``utter_goodbye``)
FAREWELL_TO_SOMETHING = re.compile(
    r"\b(?:good\s*)?bye(?:\s+bye)?\s+(?:to\s+)?(?:(?:the|my|our|this|that|old|dear|sweet|little|lovely)\s+)+"
    r"(?!friend\b|bot\b|buddy\b|for\b|now\b)[^\W\d_]+", re.IGNORECASE)
#: what goes with a goodbye ("ok I'm off to bed, goodnight", "alright, see you soon")
FAREWELL_COMPANY = re.compile(
    r"\b(?:ok(?:ay)?|alright|right|well|so|then|now|for\s+now|for\s+today|that'?s\s+(?:all|it)|"
    r"later|soon|tomorrow|another\s+time|(?:to\s+)?bed|friend|bot|buddy|everyone|all|again|"
    r"have\s+a\s+(?:good|nice|great|lovely)\s+(?:day|night|evening|one|weekend)|"
    r"thanks?(?:\s+(?:you|again))?|thank\s+(?:you|u)|cheers|you|too|off)\b", re.IGNORECASE)
#: the bot action after which a plain answer ("yeah", "nope") is handled by the domain's rules; a
#: plain answer after any other action mid-story (the story's reply came from
#: ``action_forget_persona`` that found no request to forget, or from a template) is the story going on
ANSWERED_BY_RULES = ("utter_empathize",)
#: words left after a goodbye's own words from which it tells more than that the user leaves
STORY_AFTER_FAREWELL_WORDS = 5
#: stock words of each intent: a message in the Latin alphabet read as that intent with none of
#: them in it is the story going on ("anyway, bus tomorrow" read as ``thank``, heldout_j.jsonl)
STOCK = {"greet": GREETING, "goodbye": FAREWELL, "forget_persona": re.compile(
    r"\b(?:forget|forgot|forgotten|delete|erase|wipe|remove|clear|memory|remember\w*|data|privacy|"
    r"(?:don'?t|do\s+not|stop)\s+(?:keep|stor|sav|record|track)\w*)\b", re.IGNORECASE),
    "thank": re.compile(
    r"\b(?:thank|thanks|thx|ty|tysm|cheers|appreciate|grateful|means\s+a\s+lot|help(?:s|ed|ful)?|"
    r"kind|sweet|nice|lovely|you'?re\s+(?:the\s+best|a\s+(?:star|legend|gem)|amazing|awesome|great))\b", re.IGNORECASE)}


#: a plain yes or no and what usually goes with it ("yes, I want to talk about it", "nah I'm good"):
#: an ``affirm``/``deny`` with :data:`STORY_AFTER_ANSWER_WORDS` words or more beside these tells
#: something ("Priya said yes 💍💍💍", DIET: affirm 0.98, got the help text at the start of
#: heldout_o.jsonl's proposal story)
ANSWER = re.compile(
    r"\b(?:yes+|yeah|yep|yup|ya|yea|sure|of\s+course|definitely|absolutely|ok(?:ay)?|alright|please|"
    r"(?:i'?d|i\s+would)\s+(?:like|love)\s+that|why\s+not|sounds\s+good|that'?s\s+(?:right|not\s+(?:it|right))|exactly|"
    r"correct|i\s+guess(?:\s+so)?|kind\s+of|sort\s+of|i\s+do|mhm+|uh\s+huh|go\s+on(?:\s+then)?|"
    r"(?:(?:i\s+(?:don'?t\s+)?want\s+to|i'?d\s+(?:rather|prefer)\s+(?:not\s+)?(?:to\s+)?)\s*)?talk\s+about\s+it|"
    r"no+|nope|nah|not(?:\s+(?:really|now|right\s+now|today|at\s+all|exactly))?|no\s+way|never\s+mind|"
    r"thanks?|thank\s+you|i\s+(?:don'?t\s+)?think\s+so|at\s+the\s+moment|for\s+now|right\s+now|i'?d\s+(?:rather|prefer)\s+not(?:\s+to)?|"
    r"i'?m\s+(?:okay|ok|good|fine)|so|then|just|maybe)\b", re.IGNORECASE)
#: words left after :data:`ANSWER` from which a yes or no tells the story
STORY_AFTER_ANSWER_WORDS = 2


def words(text: Text) -> int:
    """How many words (letters, with an apostrophe inside) a text has."""
    return len(re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text))


def story_after_thanks(text: Text) -> bool:
    """Whether a message read as ``thank`` goes on with the story ("thanks. i think he'd have really
    liked Tom", full stack, heldout_i.jsonl — it got "Of course. I'm always happy to listen."):
    at least :data:`STORY_AFTER_THANKS_WORDS` words beside the thanks and its usual company."""
    return words(THANKS.sub(" ", text)) >= STORY_AFTER_THANKS_WORDS


def story_after_greeting(text: Text) -> bool:
    """Whether a message read as ``greet`` tells a story: it does not open with a greeting ("took
    Pepper to the vet this morning"), or it goes on past the greeting and its usual company by three
    words or more ("hi so update on the car: it's fixed")."""
    if not GREETING.search(text):
        return words(text) >= 2
    return words(GREETING_COMPANY.sub(" ", text)) >= 3


def story_after_farewell(text: Text) -> bool:
    """Whether a message read as ``goodbye`` is a farewell to something of the story ("goodbye old
    house I guess"), has no farewell in it, or tells :data:`STORY_AFTER_FAREWELL_WORDS` words or more
    beside it. "ok bye, my mum's calling" stays a goodbye."""
    if FAREWELL_TO_SOMETHING.search(text):
        return True
    if not FAREWELL.search(text):
        return words(text) >= 2
    return words(FAREWELL_COMPANY.sub(" ", FAREWELL.sub(" ", text))) >= STORY_AFTER_FAREWELL_WORDS


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
    def last_action(tracker: Optional[DialogueStateTracker]) -> Optional[Text]:
        """The assistant's last action before the message (action_listen aside)."""
        if tracker is None:
            return None
        for event in reversed(tracker.events):
            if isinstance(event, ActionExecuted) and event.action_name not in (None, "action_listen"):
                return event.action_name
        return None

    @staticmethod
    def script(text: Text) -> Text:
        """``"latin"``, ``"other"`` (most letters outside the Latin alphabet), ``"emoji"`` (no
        letters, at least one pictograph) or ``"none"`` (digits, punctuation, nothing)."""
        letters = [c for c in text if c.isalpha()]
        if letters:
            latin = sum(1 for c in letters if "LATIN" in unicodedata.name(c, ""))
            return "latin" if latin * 2 >= len(letters) else "other"
        if has_pictograph(text):
            return "emoji"
        return "none"

    @classmethod
    def reason(cls, name: Optional[Text], confidence: float, text: Text, mid_story: bool, limits: Dict[Text, float],
               last_action: Optional[Text] = None) -> Optional[Text]:
        """Why this reading is the story going on (None: keep the intent)."""
        script = cls.script(text)
        latin = script == "latin"
        if latin and name in STOCK and not STOCK[name].search(text) and words(text) >= 2:
            return f"no {name} words"
        if name in ("affirm", "deny") and mid_story and last_action is not None and last_action not in ANSWERED_BY_RULES:
            return f"answer after {last_action}"
        if name in ("affirm", "deny") and latin and words(ANSWER.sub(" ", text)) >= STORY_AFTER_ANSWER_WORDS:
            return "story after yes/no"
        if name == "thank":
            return "story after thanks" if story_after_thanks(text) else None
        if name == "greet" and latin and story_after_greeting(text):
            return "story after greeting"
        if name == "goodbye" and latin and story_after_farewell(text):
            return "story after goodbye"
        # "book me a table" / "can you order me a taxi" are requests, though they say "me"
        statement = bool(FIRST_PERSON.search(text)) and not REQUEST.search(text)
        if name == "ask_resources" and ASKS_FOR_RESOURCES.search(text):
            return None  # asking for the numbers: always answered with them
        if name in ("out_of_scope", "ask_resources") and statement:
            return "first-person statement"
        if name in REQUEST_INTENTS and latin and not REQUEST.search(text):
            return "a statement, not a request"
        if name in UNREADABLE_AS and script in ("other", "emoji"):
            return "another script" if script == "other" else "emoji"
        if mid_story and (name == "ask_resources" or (name in limits and confidence < float(limits[name]))):
            return "mid-story"
        return None

    def process(self, messages: List[Message], tracker: Optional[DialogueStateTracker] = None) -> List[Message]:
        story, last = self.mid_story(tracker), self.last_action(tracker)
        limits: Dict[Text, float] = dict(self.config["mid_story"])
        target = self.config["target"]
        for message in messages:
            intent = message.get(INTENT) or {}
            name, confidence = intent.get(INTENT_NAME_KEY), float(intent.get(PREDICTED_CONFIDENCE_KEY) or 0.0)
            why = self.reason(name, confidence, message.get("text") or "", story, limits, last)
            if why:
                new = {INTENT_NAME_KEY: target, PREDICTED_CONFIDENCE_KEY: 1.0}
                ranking = [new] + [r for r in message.get(INTENT_RANKING_KEY, []) if r.get(INTENT_NAME_KEY) != target]
                message.set(INTENT, new, add_to_output=True)
                message.set(INTENT_RANKING_KEY, ranking, add_to_output=True)
                message.set("story_router", {"previous_intent": name, "confidence": round(confidence, 4), "reason": why},
                            add_to_output=True)
        return messages
