"""What the assistant says around a crisis: scripted, never generated.

A person who has just said they may end their life must not be answered by a language model,
nor with the same two paragraphs for every later message (which is what re-flagging the whole
window did). :class:`SafetyPolicy` decides, per turn, from the turn's perception and what SQL
holds for the conversation:

``crisis``    the message is flagged → the resources scripts (``utter_crisis_support`` +
              ``utter_crisis_resources``), every time a new crisis statement comes.
``followup``  one of the user's previous ``followup_turns`` messages was flagged, this one is
              not → a scripted follow-up that acknowledges what the person just said (reaching out,
              thanks, a coping step, or a check-in), never the same text twice in a conversation,
              with the resources one message away ("help"). Flagged only because of that earlier
              message (reason ``context-only``: "she's asleep now" after "I've counted out the
              pills") → the *urgent* follow-up: short, direct, with the numbers in it, worded
              differently each time, instead of the same two paragraphs again. The conversation
              leaves this state only once that many recent messages are unflagged.
``cleared``   in that follow-up state the person says plainly that they are not in danger or were
              misread ("no no I'm fine, I meant the skateboard trick", "lol I was joking") → one
              scripted reply that thanks them, keeps the door open ("type help") and hands the
              conversation back to the listener. Never for a message that is flagged on its own or
              holds a plan / timing / farewell cue or a minimising phrase ("I'm fine, forget it",
              "it doesn't matter anymore"). After it, a flag that only the cleared context raises
              (``context-only``, while the crisis turn is still in the detector's window) no longer
              counts; a message flagged on its own starts over.
``checkin``   the classifier is concerned but below the crisis threshold, and perception hears a
              negative feeling, or a plan / timing / farewell cue matched, or the classifier is sure
              (``STRONG_CONCERN``) however upbeat the conversation sounds → a scripted, direct safety question (asking directly is recommended practice and does not plant ideas).
              Also when Rasa's NLU read a crisis that the detector did not flag (two detectors
              disagree: ask rather than paste the resources), unless the last reply asked already
              or the detector is sure the message is ordinary (crisis score under ``nlu_floor``,
              the detector's cue gate: the NLU intent is a keyword-trained signal like a cue).
``affirmed``  the previous reply was that question and the person says yes → the resources, and
              the turn is stored as a crisis turn.
``clarify``   the previous reply was that question and the answer is neither yes nor no ("ok",
              "idk", "hmm", "not sure") → the question once more, shorter and plainer, instead of a
              generated reply to a non-answer (a listener model answered "ok" with "I hope you have a
              good life"). Asked once: after it, anything but a yes hands back to the listener.
``None``      an ordinary turn.

Every scripted text lives in the Rasa domain (``utter_crisis_*``), so it is reviewed in one place
and Rasa can render the same texts when the engine is down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from empathy_nlg.perception.crisis import CONTEXT_ONLY, WINDOW_TURNS

CRISIS_RESPONSES = ("utter_crisis_support", "utter_crisis_resources")
CHECKIN = "utter_crisis_checkin"
GOODBYE = "utter_crisis_goodbye"
#: a message flagged only in the context of the crisis already answered: the danger goes on
URGENT = "utter_crisis_followup_urgent"
FOLLOWUPS = {
    "reaching_out": "utter_crisis_followup_reaching_out",
    "thanks": "utter_crisis_followup_thanks",
    "coping": "utter_crisis_followup_coping",
    "checkin": "utter_crisis_followup_checkin",
}
#: the person said they are not in danger: thanked, the door left open, back to listening
CLEARED = "utter_crisis_all_clear"
#: the generator name a cleared turn's reply is stored under (the follow-up window ends at it)
CLEARED_GENERATOR = "crisis-cleared"
#: the check-in asked once more, plainly, after an answer that is neither yes nor no
CHECKIN_UNCLEAR = "utter_crisis_checkin_unclear"
#: the generator names the two questions' replies are stored under (a "yes" to either is a crisis turn)
ASKED_GENERATORS = ("crisis-checkin", "crisis-clarify")
SCRIPTED_RESPONSES = (CHECKIN, CHECKIN_UNCLEAR, GOODBYE, URGENT, CLEARED, *FOLLOWUPS.values())
#: template responses that a follow-up replaces while the conversation is in the crisis state
REPLACED_TEMPLATES = ("utter_you_are_welcome", "utter_out_of_scope", "utter_default", "utter_greet")

_REACHING_OUT = re.compile(r"\b(?:call|calling|called|text|texting|line|988|116|hotline|helpline|talk(?:ed|ing)? to|"
                           r"reach(?:ed|ing)? out|therapist|counsel+or|doctor|gp|nurse|friend|mum|mom|dad|sister|brother|"
                           r"partner|wife|husband|roommate|emergency|hospital|911|999|112)\b", re.I)
_THANKS = re.compile(r"\b(?:thanks|thank you|thx|ty|appreciate)\b", re.I)
_COPING = re.compile(r"\b(?:walk|shower|bath|tea|coffee|eat|ate|food|sleep|slept|nap|rest|music|breath\w*|outside|"
                     r"water|bed|lie down|calm\w*|journal\w*|write|wrote|pet|dog|cat|game|tv|movie)\b", re.I)
_YES = re.compile(r"^\s*(?:yes|yeah|yea|yep|ya|y|kind of|kinda|sort of|sometimes|maybe|a bit|a little|i think so|"
                  r"probably|honestly yes|i am thinking|i have been|i do think)\b", re.I)
ASKS_FOR_RESOURCES = re.compile(r"\?|\b(?:help|numbers?|again|give me|send me|what'?s the|hotline|helpline|"
                                r"who (?:can|do|should) i|where (?:can|do|should) i|resources?)\b", re.I)
_NO = re.compile(r"\b(?:no|not|nope|nah|never|i'?m fine|i am fine|i'?m ok(?:ay)?|i'?m good|i'?m alright)\b", re.I)
#: an answer to the check-in that is neither yes nor no: the whole message is a bare acknowledgement,
#: a shrug or a "don't know" (checked before :data:`_NO`, which "not sure" would match)
_UNCLEAR = re.compile(r"^\W*(?:ok(?:ay)?|k+|kk|o+k+|hm+|mm+|idk|i\s+(?:don'?t|do\s+not|dont)\s+know|dunno|not\s+sure|"
                      r"i'?m\s+not\s+sure|whatever|sure|fine|alright|i\s+guess|maybe\s+not|\.+|\?+)\W*$", re.I)


#: a plain "I am not in danger / you misread me": about oneself (I'm fine, not suicidal), about what was
#: meant (I meant…, I was joking, just an expression) — never a bare "no" or "ok"
_ALL_CLEAR = re.compile(
    r"\b(?:i'?m|i am|im)\s+(?:totally |really |honestly |actually |completely |perfectly |absolutely )?"
    r"(?:fine|ok|okay|alright|all right|good|safe)\b"
    r"|\bnot (?:suicidal|in (?:any )?danger|going to (?:hurt|kill) myself|like that|what i meant|literally|serious(?:ly)?)\b"
    r"|\bi (?:only |just )?(?:meant|was (?:just )?(?:talking about|joking|kidding|being dramatic|exaggerating)|didn'?t mean (?:it )?like that)\b"
    r"|\b(?:just|only) (?:a |an )?(?:joke|joking|kidding|figure of speech|expression|saying|metaphor)\b"
    r"|\b(?:wrong idea|misunderst\w*|misread\w*|nothing like that|not that kind of)\b", re.I)
#: what must never count as an all-clear however it is worded: minimising, farewells, the means
_NOT_CLEAR = re.compile(
    r"\b(?:forget (?:it|about it|i said)|never ?mind|doesn'?t matter|don'?t matter|won'?t matter|no point|anymore|"
    r"any more|at peace|made (?:my )?peace|decided|goodbye|bye|for good|end (?:it|things)|die|dying|dead|kill|pills?|"
    r"rope|gun|overdose|tonight|better off|burden|leave me alone|not (?:ok|okay|fine|good|alright|safe)|"
    r"not sure|don'?t know)\b", re.I)


def is_all_clear(text: str) -> bool:
    """The message says plainly that the person is not in danger or was misread, and holds nothing
    that undoes it (minimising, a farewell, a means, a time)."""
    return bool(_ALL_CLEAR.search(text or "")) and not _NOT_CLEAR.search(text or "")


def followup_kind(text: str) -> str:
    """Which scripted follow-up acknowledges ``text``: reaching_out, thanks, coping or checkin."""
    if _REACHING_OUT.search(text or ""):
        return "reaching_out"
    if _THANKS.search(text or ""):
        return "thanks"
    if _COPING.search(text or ""):
        return "coping"
    return "checkin"


#: a classifier concern at least this sure (the ``concern:P`` reason, P rounded to two places) asks
#: the safety question however the conversation sounds (the default of ``safety.strong_concern``). People rarely open with the crisis: after good
#: news ("exams done!! going out tonight" / "one good night and that's it. when i get home i'm taking
#: everything in the bathroom cabinet") perception hears the upbeat context (joyful, proud), and on the
#: blind heldout_v 11 of 24 imminent statements left with neither flag nor question had the classifier
#: concerned at 0.83–1.00 but a positive polarity and no word cue (perception HISTORY.md, 2026-12-07).
STRONG_CONCERN = 0.8


def concern_level(perception) -> float:
    """The classifier's concern about this turn (0 when it is not concerned): the ``concern:P`` reason."""
    levels = [float(str(r).split(":", 1)[1]) for r in getattr(perception, "crisis_reasons", None) or []
              if str(r).startswith("concern:")]
    return max(levels, default=0.0)


def checkin_reason(perception, just_asked: bool = False, strong_concern: float = STRONG_CONCERN) -> Optional[str]:
    """Why a turn the crisis detector is concerned about (below the flag) gets the scripted safety
    question, or None: it sounds negative (unless the question was just asked), or a plan / timing /
    farewell cue matched (a word cue or the learned one), or the classifier is very sure
    (:data:`STRONG_CONCERN`) — a mild concern about good news is not met with a safety question, but
    a plan, a chosen time or a farewell is asked about however calm or glad it sounds ("I finally feel
    at peace now that I've decided when"): relief after deciding is a warning sign, and the word cues
    match 0.03 % of ordinary ED messages. ``eval-crisis --served`` counts check-ins with this rule."""
    if perception is None or not getattr(perception, "crisis_concern", False):
        return None
    if perception.polarity == "negative" and not just_asked:
        return "classifier concern below the crisis threshold"
    if any(str(r).startswith("cue:") for r in perception.crisis_reasons or []):
        return "a plan, timing or farewell cue, however it sounds"
    if concern_level(perception) >= strong_concern and not just_asked:
        return "a sure classifier concern, however it sounds"
    return None


@dataclass
class SafetyDecision:
    state: Optional[str]  # crisis | followup | checkin | clarify | affirmed | cleared | None
    responses: List[str]  # domain responses whose texts make the reply (empty: no override)
    reason: str = ""


class SafetyPolicy:
    def __init__(self, domain, followup_turns: int = 3, nlu_floor: float = 0.0,
                 strong_concern: float = STRONG_CONCERN) -> None:
        self.domain = domain
        self.followup_turns = int(followup_turns)
        #: ``safety.strong_concern``: a classifier concern this sure asks however the conversation sounds
        self.strong_concern = float(strong_concern)
        #: crisis score under which the NLU's crisis reading asks nothing (the detector's cue gate on
        #: its score's scale, :attr:`CrisisDetector.lexical_floor`). Measured through /model/parse on
        #: 1,558 single messages (held-out phrasings e…j and the chat sets e…j), the NLU asked about 10
        #: ordinary chat turns, 8 hard negatives and 10 crisis statements the detector had not flagged;
        #: the floor keeps all 10 crisis statements (lowest score 0.073) and drops 7 chat turns and 5
        #: hard negatives ("Thinking of spending some of it on a trip to Lisbon", "I'm dead 😂").
        self.nlu_floor = float(nlu_floor)

    def decide(self, response_name: str, generated: bool, perception, earlier_turns: Sequence[Mapping[str, Any]],
               earlier_replies: Sequence[Mapping[str, Any]], user_text: str, nlu_disagrees: bool = False) -> SafetyDecision:
        """The decision for this turn. ``earlier_turns``/``earlier_replies``: what SQL holds before it.
        ``nlu_disagrees``: Rasa's NLU read a crisis the engine did not flag (the agent's crisis component
        demoted it and marked it ``ask``): the safety question, unless it was the last reply already."""
        # the follow-up window runs from the last turn the person cleared ("I'm fine, I was joking")
        cleared_at = max((r.get("turn_index", -1) for r in earlier_replies if r.get("generator") == CLEARED_GENERATOR),
                         default=None)
        after = [t for t in earlier_turns if cleared_at is None or t.get("turn_index", -1) > cleared_at]
        recent = after[-self.followup_turns:]
        in_followup = any(t.get("crisis") for t in recent)
        crisis = bool(perception is not None and perception.crisis)
        reasons = list(perception.crisis_reasons or []) if perception is not None else []
        context_only = crisis and CONTEXT_ONLY in reasons
        if (context_only and cleared_at is not None and not in_followup and len(after) < WINDOW_TURNS - 1
                and not any(r.get("generator") in ASKED_GENERATORS and r.get("turn_index", -1) > cleared_at
                            for r in earlier_replies)):
            # flagged only by a context the person has cleared (the detector's window still holds the
            # crisis turn before the all-clear), and nothing since raised a question
            crisis = False
        still_in_danger = crisis and in_followup and context_only
        if (in_followup and (not crisis or context_only) and is_all_clear(user_text)
                and not any(str(r).startswith("cue:") for r in reasons)
                and (generated or response_name not in (*CRISIS_RESPONSES, "utter_goodbye"))):
            # whatever template Rasa chose for "no no I'm fine" (a deny after the resources may get the
            # help text); a goodbye keeps the crisis goodbye, a request for the resources gets them
            return SafetyDecision("cleared", [CLEARED], "the person said they are not in danger")
        if still_in_danger:
            # flagged only by its context, which is the crisis already answered: not the same two
            # paragraphs again, but not an ordinary follow-up either — the urgent one, numbers included
            crisis = False
        if crisis:
            return SafetyDecision("crisis", list(CRISIS_RESPONSES) if generated else [], "flagged")
        last_reply = earlier_replies[-1] if earlier_replies else None
        asked = last_reply is not None and last_reply.get("generator") in ASKED_GENERATORS
        if asked and _YES.search(user_text or "") and not _NO.search(user_text or ""):
            return SafetyDecision("affirmed", list(CRISIS_RESPONSES), "answered yes to the check-in")
        if (not in_followup and generated and last_reply is not None and last_reply.get("generator") == "crisis-checkin"
                and _UNCLEAR.search(user_text or "")):
            return SafetyDecision("clarify", [CHECKIN_UNCLEAR], "neither yes nor no to the check-in: asked once more")
        if in_followup:
            if still_in_danger and (generated or response_name in REPLACED_TEMPLATES or response_name == "utter_crisis_resources"):
                return SafetyDecision("followup", [URGENT], "flagged again in the context of the crisis (urgent)")
            if generated or response_name in REPLACED_TEMPLATES:
                kind = followup_kind(user_text)
                return SafetyDecision("followup", [FOLLOWUPS[kind]], f"after a crisis turn ({kind})")
            if response_name == "utter_goodbye":
                return SafetyDecision("followup", [GOODBYE], "goodbye after a crisis turn")
            if response_name == "utter_crisis_resources" and not ASKS_FOR_RESOURCES.search(user_text or ""):
                # "ok, I'll call the line" read as a request for the numbers it has just been given:
                # acknowledge it instead of pasting the same paragraph again
                kind = followup_kind(user_text)
                return SafetyDecision("followup", [FOLLOWUPS[kind]], f"resources already given ({kind})")
            return SafetyDecision("followup", [], "template kept")
        # the question was the last reply and the person did not say yes: carry on listening rather than
        # ask the same thing again (the check-in says "if not, just say so and we'll carry on")
        just_asked = asked
        nlu_worried = nlu_disagrees and (perception is None or float(perception.crisis_score) >= self.nlu_floor)
        if generated and nlu_worried and not just_asked:
            return SafetyDecision("checkin", [CHECKIN], "the NLU heard a crisis the detector did not flag: ask")
        reason = checkin_reason(perception, just_asked, self.strong_concern) if generated else None
        if reason:
            return SafetyDecision("checkin", [CHECKIN], reason)
        return SafetyDecision(None, [])

    def render(self, decision: SafetyDecision, slots: Mapping[str, Any], channel: Optional[str],
               used_texts: Sequence[str]) -> Dict[str, Any]:
        """The scripted reply: each response's first variant not yet used in this conversation."""
        used = {" ".join(t.split()) for t in used_texts}
        parts = []
        for name in decision.responses:
            if name in CRISIS_RESPONSES:  # the resources are the same every time, on purpose
                parts.append(self.domain.render(name, slots, channel).get("text", ""))
                continue
            if name not in self.domain:  # an older domain without the scripted steps: the resources
                parts.append(self.domain.render("utter_crisis_resources", slots, channel).get("text", ""))
                continue
            variants = self.domain.variants(name, slots, channel)
            fresh = [v for v in variants if " ".join(v.split()) not in used]
            parts.append((fresh or variants)[0])
        return {"text": "\n\n".join(p for p in parts if p)}
