"""Crisis flag: self-harm / suicidal intent or imminent danger versus ordinary sadness.

Method (safety first: recall before precision)
---------------------------------------------
1. **A trained classifier** (``crisis_head``, :mod:`empathy_nlg.perception.crisis_train`) over the
   user's latest message *and the conversation so far*: features ``[mean, max]`` of the MiniLM
   embeddings of the message's chunks (long messages are read in 64-word chunks, not truncated)
   and the mean embedding of the user's previous (up to 3) messages, so "tonight's the night"
   after "I bought a rope" is read in its context. Trained on real labelled posts (C-SSRS Reddit
   annotations) plus the project's own phrasings and hard negatives; its threshold is chosen on a
   dev split for recall. Reason: ``classifier:<p>``. Served (v7, ``crisis_head_mpnet``) on the
   frozen all-mpnet-base-v2 (:mod:`empathy_nlg.perception.crisis_mpnet`), which runs only when the
   MiniLM head (``crisis_head``, v6) opens the gate (probability ≥ ``gate_threshold``, an earlier
   message at its check-in threshold, or any pattern/cue); without that encoder the MiniLM head
   decides alone (a warning at load).
2. **Curated lexical patterns** (:data:`PATTERNS`) as a floor the classifier cannot lower:
   explicit suicide/self-harm phrasings, wishes to be dead, plans and means, burden statements.
   Idioms that share the words ("this exam is killing me", "dying to see", "phone died") never
   match because every pattern requires a first-person self-directed form.
   The means in hand or taken (C-SSRS preparatory behaviour: an overdose swallowed, a noose, a
   loaded gun, stockpiled pills) are patterns too.
3. **Negation handling** for patterns: a match preceded in the same clause by a negator ("I would
   *never* hurt myself") is reported as ``negated:<name>`` with a sub-threshold score.
4. **Imminent-danger cues** (:data:`CUES`: at a height, by the tracks, "I'll do it", a date chosen,
   letters written, goodbyes, affairs put in order, belongings given away): words ordinary speech
   also uses, so never a flag alone. A cue plus a concerned classifier (≥ its check-in threshold) is
   a crisis; a cue with the classifier above ``cue_gate`` asks the scripted check-in. Reason
   ``cue:<name>``.
5. **A learned imminent-danger cue** (``crisis_imminent_mpnet``, v16 on): a second head on the same
   larger-encoder features, trained only on plan / means, timing and farewell statements against
   every ordinary message (:func:`empathy_nlg.perception.crisis_train.train_imminent`). It reads
   the implicit statements no word list holds ("rent's due and I won't be here to pay it") and
   counts as one more cue (``cue:imminent-head``, with ``imminent:<p>``) when its probability
   reaches its own threshold, chosen on dev to keep ordinary chat quiet. It runs only when the
   larger encoder runs. An earlier message it caught is danger in the context
   (:meth:`CrisisDetector.context_holds_danger`).

Only the **latest** user message is judged (its context informs the classifier, and the patterns
and cues read the last :data:`WINDOW_TURNS` messages together only for a match that reaches into
the latest one — "I'm holding my dad's pistol" / "it's loaded"; reason ``window:<name>`` plus
``context-only``): a crisis statement two turns ago does not flag "ok, I'll call the line" — what
happens after a crisis turn is the engine's crisis follow-up (:mod:`empathy_nlg.safety`), not a
re-flag of the whole window.
``crisis_score`` is the max of the pattern score and the classifier's probability mapped so that
its threshold lands on 0.5; ``crisis`` is ``crisis_score ≥ 0.5``. Measured recall and false
positives per category: ``empathy-nlg eval-crisis`` and the perception model card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

EVAL_SET = Path(__file__).resolve().parent / "crisis_eval.yml"

_SELF = r"(?:my\s*self|myself)"
#: what may follow "wake up" in ``never_wake``: not a time, a person woken or a manner ("until 10",
#: "the baby", "late", "with a hangover", "in the night")
_WAKE_END = (r"(?!\s+(?:up\s+)?(?:until|till|til|before|after|at|for|late|early|so|with|from|when|during|the|my|her|his|him|"
             r"them|anyone|everyone|every|each|once|twice|in\s+(?:time|the\s+night|the\s+middle))\b)")
PATTERNS: Dict[str, str] = {
    "suicide_word": r"\bsuicid(?:e|al)\b(?!\s+(?:prevention|awareness|hotline))",
    "kill_self": r"\bkill(?:ing|ed)?\s+" + _SELF + r"\b",
    "end_life": r"\b(?:end|ending|take|taking)\s+(?:my\s+(?:own\s+)?life|it\s+all|my\s+own\s+life)\b",
    "end_things": r"\b(?:going\s+to|gonna|want\s+to|will)\s+end\s+(?:things|everything)\b",
    "want_die": r"\b(?:want|wanna|wish|ready|going|deserve|hope)\s*(?:to\s+)?(?:just\s+)?(?:to\s+)?die\b",
    "should_die": r"\b(?:should|could)\s+(?:just\s+)?die\b(?!\s+(?:of|from|laughing))",
    "wish_dead": r"\b(?:wish|rather\s+be|better\s+off)\s+(?:i\s+(?:was|were)\s+)?dead\b",
    "rather_dead": r"\brather\s+be\s+dead\b",
    "not_alive": r"\b(?:don'?t|do\s+not|no\s+longer)\s+want\s+to\s+(?:be\s+alive|live|exist|be\s+here|wake\s+up)\b",
    "stop_living": r"\b(?:stop|tired\s+of|done\s+with)\s+(?:living|life)\b",
    "no_reason_live": r"\b(?:no|any)\s+(?:reason|point)\s+(?:for\s+me\s+)?(?:to|in)\s+(?:keep\s+)?(?:living|live|go(?:ing)?\s+on)\b",
    "not_worth_living": r"\b(?:life\s+is(?:n'?t|\s+not)|not)\s+worth\s+living\b",
    # v14: only a wish not to wake, a sleep that should not end, or not waking as a purpose — v13's
    # bare "not/don't wake up" sent "the baby did not wake up once last night!" and "I don't wake up
    # until 10" to the resources; a time, a person or a manner after it is ordinary (_WAKE_END)
    "never_wake": (r"(?:\b(?:hop|wish|pray|want)\w*\s+(?:(?:every|each)\s+night\s+)?(?:that\s+)?(?:i\s+)?(?:(?:just|could|would|will)\s+)*"
                   r"(?:never|not|don'?t|do\s+not|won'?t|wouldn'?t|didn'?t)\s+(?:to\s+)?wake\s+up\b|"
                   r"\b(?:sleep|asleep)\b[^.!?]{0,20}?\band\s+(?:just\s+)?(?:never|not|don'?t)\s+wake(?:\s+up)?\b|"
                   r"\b(?:to\s+(?:just\s+)?(?:not|never)|(?:so|enough|make\s+sure|making\s+sure|sure)\s+(?:that\s+)?i\s+(?:just\s+)?"
                   r"(?:don'?t|do\s+not|won'?t|never))\s+wake\s+up\b|"
                   r"\b(?:never|not)\s+wake\s+up\s+(?:again|ever)\b)" + _WAKE_END + "|"
                   r"\b(?:mind|care|relief|easier|better)\s+if\s+i\s+(?:just\s+)?(?:didn'?t|never|did\s+not|wouldn'?t)\s+wake\s+up\b|"
                   r"\bif\s+i\s+(?:just\s+)?(?:didn'?t|never)\s+wake\s+up\b[^.!?]{0,30}?\b(?:relief|better|easier|mind|care)\b"),
    "better_off_without": r"\bbetter\s+off\s+(?:without\s+me|if\s+i\s+(?:was|were|wasn'?t|weren'?t)\s+(?:gone|dead|here|around))\b",
    "self_harm": r"\bself[\s-]?harm(?:ing)?\b",
    "hurt_self": r"\b(?:hurt(?:ing)?|cut(?:ting)?|burn(?:ed|t|ing)?|harm(?:ing)?)\s+myself\b",
    "slit_wrists": r"\bslit(?:ting)?\s+(?:my\s+)?wrists?\b",
    "overdose": r"\b(?:overdos(?:e|ing)|all\s+my\s+pills|bunch\s+of\s+pills|pills\s+at\s+once)\b",
    "hang_self": r"\bhang(?:ing)?\s+myself\b",
    "jump_off": r"\b(?:jump(?:ing)?\s+off\s+(?:a|the)\s+(?:building|bridge|roof|cliff)|thinking\s+of\s+jumping)\b",
    "suicide_note": r"\b(?:suicide|goodbye)\s+(?:note|letter)\b(?!.*\bcoworker)",
    "not_here_anymore": r"\b(?:wasn'?t|weren'?t|not\s+be|won'?t\s+be)\s+(?:here|around)\s+(?:anymore|much\s+longer)\b",
    "disappear_forever": r"\bdisappear\s+forever\b",
    "cant_go_on": r"\bcan'?t\s+(?:go\s+on|take\s+it\s+anymore)\b",
    "means_on_self": r"\b(?:using|use)\s+it\s+on\s+myself\b",
    "ways_to_die": r"\bways\s+to\s+die\b",
    # v11: "my last day at my old job / before retirement / of term" is a leaving do, not a farewell;
    # v12: so is one told in the past ("Friday was my last day after 34 years at the council")
    "last_day": r"(?<!was\s)(?<!were\s)\bmy\s+last\s+day\b(?!\s+(?:at|of|in|before|after|as|with|working|teaching|there|"
                r"here\s+at)\b)(?!\s+on\s+(?!earth\b))",
    "if_i_died": r"\b(?:care|notice)\s+if\s+i\s+(?:died|was\s+gone|disappeared)\b",
    "plan_to_die": r"\bplan\s+to\s+(?:kill|die|end)\b",
    # means in hand or taken (C-SSRS "preparatory behaviour" / "actual attempt"): unambiguous on
    # their own, so they flag without the classifier
    "overdose_taken": r"\b(?:took|taken|swallowed|downed)\s+(?:like\s+|about\s+|maybe\s+|almost\s+)?(?:all|the\s+(?:whole|rest|entire)|"
                      r"a\s+(?:whole|handful|bunch|load)|\d{2,}|ten|fifteen|twenty|thirty|forty|fifty)\b[^.!?]{0,40}?"
                      r"\b(?:pills|tablets|paracetamol|painkillers|meds|medication|capsules|antidepressants|packet|bottle)\b",
    "hanging_means": r"\bnoose\b|\b(?:rope|cord|belt)\b[^.!?]{0,60}?\b(?:beam|ceiling|rafters?|hook|know\s+which\s+tree|around\s+my\s+neck)\b",
    "firearm_access": r"\b(?:gun|pistol|rifle|shotgun|revolver|firearm)\b[^.!?]{0,60}?\b(?:loaded|in\s+my\s+(?:hand|lap|mouth)|"
                      r"know\s+the\s+code|(?:nobody|no\s+one)(?:'s|\s+is)\s+home|to\s+my\s+head)\b",
    "stockpile": r"\b(?:stockpil\w*|hoard\w*|sav(?:ed|ing)\s+up|counted\s+out|lined\s+up)\b[^.!?]{0,40}?\b(?:pills|tablets|"
                 r"paracetamol|painkillers|meds|medication|insulin|prescriptions?|antidepressants)\b|"
                 # v11: the same told the other way round ("the pills are lined up on my desk")
                 r"\b(?:pills|tablets|paracetamol|painkillers|meds|antidepressants)\s+(?:are\s+|all\s+)?(?:all\s+)?"
                 r"(?:lined\s+up|stockpiled|saved\s+up)\b",
}
_COMPILED = {name: re.compile(p, re.IGNORECASE) for name, p in PATTERNS.items()}

#: Imminent-danger *cues* (C-SSRS plan, means, timing, farewell) that ordinary speech also uses
#: ("I'm on the roof fixing the gutter", "I'll do it tomorrow", "I wrote a farewell note to the
#: team"): never a flag on their own. With the classifier at or above its check-in threshold a cue
#: makes the turn a crisis; above ``cue_gate`` it asks the scripted check-in; without a classifier
#: (patterns-only mode) a cue asks the check-in. Reason: ``cue:<name>``.
CUES: Dict[str, str] = {
    "at_height": r"\b(?:i'?m|i\s+am|im)\s+(?:\w+\s+){0,2}?(?:on|at|by|near|over|up\s+on)\s+(?:the|a|my)\s+"
                 r"(?:edge(?!\s+of\s+(?:my|the)\s+seat)|roof|rooftop|ledge|bridge|balcony|cliff|top\s+floor|railing|parapet|"
                 r"top\s+of\s+(?:the\s+|a\s+|my\s+)?(?:building|bridge|cliff|car\s+park|tower|multi-?storey))\b",
    "looking_down": r"\bthe\s+drop\b(?!\s+of)|\bfar\s+down\b(?!\s+(?:the|my|a)\s)|\bhow\s+high\s+(?:it|this)\s+is\b",
    "traffic_rail": r"\bwaiting\s+for\s+(?:a|the)\s+(?:lorry|truck|train)\s*(?:to\s+come|$|[.,!])|\btrains?\s+(?:don'?t|doesn'?t|do\s+not|never)\s+"
                    r"(?:stop|slow)|\b(?:railway|train)\s+(?:line|tracks)\b",
    "do_it": r"\b(?:i'?ll|i\s+will|i'?m\s+(?:going\s+to|gonna)|i'?m\s+(?:finally\s+)?doing|then)\s+(?:finally\s+)?"
             r"(?:do\s+it|doing\s+it|go\s+through\s+with\s+it)\b|\bis\s+when\s+it\s+happens\b",
    "date_chosen": r"\b(?:chosen|picked|decided\s+on)\s+(?:the|a)\s+(?:day|date|time)\b|"
                   r"\b(?:won'?t|not\s+(?:going\s+to|gonna))\s+be\s+alive\b|\bmade\s+(?:up\s+my\s+mind|peace\s+with\s+it)\b",
    "farewell_letters": r"\b(?:wrote|written|writing|left|leaving|recorded)\s+(?:a\s+|some\s+|long\s+)?(?:letters?|notes?|(?:voice\s+|video\s+)?"
                        r"messages?|videos?)\s+(?:for|to)\s+(?:my|everyone|all|each)\b",
    "goodbyes": r"\b(?:said|saying)\s+my\s+goodbyes?\b|\bsaid\s+goodbye\s+to\s+(?:everyone|everybody|all\s+of\s+you)\b|"
                r"\bthis\s+is\s+goodbye\b|\blast\s+(?:time\s+you'?ll\s+hear|message)\s+from\s+me\b|"
                r"\bno\s+more\s+messages\s+from\s+me\b|\bthe\s+last\s+time\s+you'?ll\s+hear\b",
    "affairs_in_order": r"\b(?:sorted|sorting|put)\s+(?:out\s+)?(?:my\s+)?(?:will|affairs|passwords|funeral)\b|\bleft\s+(?:my\s+)?"
                        r"(?:passwords|instructions)\b|\b(?:after|when)\s+i'?m\s+(?:gone|not\s+here)\b|\bi\s+won'?t\s+be\s+there\b|"
                        r"\bso\s+(?:nobody|no\s+one)\s+has\s+to\s+deal\b",
    "gave_away": r"\b(?:gave|giving|given)\s+away\s+(?:my|all\s+my|most\s+of\s+my)\b|\b(?:gave|giving|given)\s+(?:my|all\s+my)\s+"
                 r"(?:dog|cat|pets?|guitar|records|things|stuff|belongings|possessions|savings)\s+(?:away|to)\b",
    "blade_ready": r"\b(?:blade|blades|razor)\b[^.!?]{0,30}?\b(?:ready|in\s+my\s+hand|out\s+again|next\s+to\s+me)\b",
    "tell_them": r"\btell\s+(?:my|them|her|him|everyone)\b[^.!?]{0,40}?\b(?:i'?m\s+sorry|i\s+loved|(?:wasn'?t|not)\s+(?:their|his|her|your)\s+fault)\b",
    # v10 (2026-12-04): four warning-sign families of the clinical lists that the cues above left
    # out, written from the categories (final acts, what holds a person here, affairs settled,
    # a ligature prepared, withdrawing with a goodbye), not from any one held-out message
    "final_act": r"\bone\s+(?:last|final)\s+time\b|\bfor\s+the\s+(?:very\s+)?(?:last|final)\s+time\b(?!\s*[,!:])|\bone\s+(?:last|final)\s+(?:walk|look|visit|call|hug|drive|swim|"
                 r"goodbye|night)\b|\b(?:hear|see)\s+(?:his|her|their|your|my\s+\w+(?:'s)?)\s+(?:voice|face)\s+one\s+(?:more|last)\s+time\b",
    "nothing_holding": r"\b(?:last|only)\s+(?:thing|one|person|reason)\s+(?:(?:that\s+)?(?:was\s+|is\s+)?keep(?:s|ing)?|"
                       r"(?:that\s+)?(?:was\s+|is\s+)?hold(?:s|ing)?|that\s+kept|that\s+held)\s+me\s+(?:here|alive|around)\b|"
                       r"\bnothing\s+(?:left\s+)?(?:keeping|holding)\s+me\s+(?:here|alive|back)\b|"
                       r"\bnothing\s+left\s+(?:for\s+me\s+)?to\s+(?:live|stay)\s+for\b",
    "affairs_settled": r"\bpaid\s+off\s+(?:all\s+(?:of\s+)?)?my\s+debts\b|\b(?:very\s+)?last\s+(?:bill|loose\s+end)\b|"
                       r"\bcancel(?:l?ed|l?ing)\s+my\s+(?:phone|gym|contract|subscriptions?|lease|insurance)\b[^.!?]{0,40}?"
                       r"\b(?:and|too|as\s+well)\b|\bwon'?t\s+be\s+needing\s+any\s+of\s+(?:it|this|them)\b|"
                       r"\b(?:made|wrote|written|signed)\s+(?:a|my)\s+will\b",
    "ligature": r"\b(?:noose|ligature)\b|\bknot\s+is\s+(?:tied|ready)\b|\bknot\b[^.!?]{0,40}?\bhang(?:s|ing)\b",
    "withdrawal_goodbye": r"\b(?:deleted|deactivated|closed)\s+(?:all\s+(?:of\s+)?)?my\s+(?:socials|social\s+media|accounts|"
                          r"instagram|facebook|snapchat)\b[^.!?]{0,60}?\b(?:bye|goodbye|farewell)\b|"
                          r"\bsaid\s+(?:bye|goodbye)\s+to\s+(?:the\s+)?(?:group\s*chat|everyone|everybody|all\s+of\s+them)\b",
}
_CUES = {name: re.compile(p, re.IGNORECASE) for name, p in CUES.items()}
#: v11: a "last time" said while leaving a home or a workplace — moving house, a sold childhood home,
#: an office that closes — is an ordinary use of the ``final_act`` cue (both check-ins it added on
#: the chat scripts were moves): the cue does not count in a message that also speaks of the move. A final act in a farewell keeps every other cue and the
#: classifier; "the beach one last time" or "hear her voice one more time" are untouched.
ORDINARY_DEPARTURE = re.compile(
    r"\b(?:mov(?:e|ed|ing|ers)\s+(?:out|in|house|away|abroad|up|down|to|on)|movers|removal\s+van|sold|selling|"
    r"hand(?:ed|ing)?\s+(?:back\s+)?(?:the|over\s+the|in\s+the|my)\s+keys|keys\s+back|downsiz\w*|emigrat\w*|"
    r"(?:empty|every|all\s+the|each)\s+rooms?|childhood\s+(?:home|house|bedroom)|old\s+(?:house|flat|place|home|office|flatshare|dorm)|"
    r"new\s+(?:house|flat|place|home|city|job)|(?:office|shop|branch|school)\s+(?:is\s+)?clos(?:es|ing|ed))\b", re.IGNORECASE)
#: the patterns and cues, named in the detector's version (v10: five more cue families; v11: the
#: ``final_act`` cue steps aside for an ordinary move, :data:`ORDINARY_DEPARTURE`; v12: a last day
#: told in the past or "after N years" is not the ``last_day`` pattern; v13: a check-in concern the
#: context alone raises needs danger in that context, :meth:`CrisisDetector.concern_from_context_alone`;
#: v14: ``never_wake`` only for a wish not to wake or not waking as a purpose, not "the baby did not wake up")
RULES_VERSION = "patterns-v14"
#: classifier probability below which a cue alone asks nothing (``cue_gate`` in the head's config)
CUE_GATE = 0.05


def cue_matches(text: str) -> List[str]:
    """The imminent-danger cues (:data:`CUES`) in ``text``, negation-aware like the patterns."""
    out = []
    for name, rx in _CUES.items():
        m = rx.search(text)
        if m is None:
            continue
        clause_start = 0
        for b in CLAUSE_BREAK.finditer(text, 0, m.start()):
            clause_start = b.end()
        if not NEGATORS.search(text[clause_start : m.start()]):
            out.append(name)
    if "final_act" in out and ORDINARY_DEPARTURE.search(text):
        out.remove("final_act")
    return out
# "can't go on" and "can't take it anymore" alone are common venting: weaker evidence.
WEAK_PATTERNS = {"cant_go_on", "last_day"}
NEGATORS = re.compile(r"\b(?:not|never|no|n't|nobody\s+should|wouldn'?t|won'?t|don'?t)\b", re.IGNORECASE)
CLAUSE_BREAK = re.compile(r"[,.;!?]|\bbut\b", re.IGNORECASE)

@dataclass
class CrisisResult:
    crisis: bool
    score: float
    reasons: List[str] = field(default_factory=list)
    #: below the crisis threshold but above the recall-first concern threshold: ask, do not generate
    concern: bool = False


def pattern_matches(text: str) -> Tuple[float, List[str]]:
    """Pattern score and reasons for one utterance (negation-aware)."""
    reasons: List[str] = []
    score = 0.0
    for name, rx in _COMPILED.items():
        for m in rx.finditer(text):
            clause_start = 0
            for b in CLAUSE_BREAK.finditer(text, 0, m.start()):
                clause_start = b.end()
            prefix = text[clause_start : m.start()]
            if NEGATORS.search(prefix) and name not in ("never_wake", "not_alive", "not_here_anymore", "not_worth_living"):
                reasons.append(f"negated:{name}")
                score = max(score, 0.4)
            else:
                reasons.append(name)
                score = max(score, 0.6 if name in WEAK_PATTERNS else 1.0)
            break
    return score, sorted(set(reasons))


CHUNK_WORDS = 64
#: the user's latest messages that the patterns and cues read together (the message and two before)
WINDOW_TURNS = 3
MAX_CHUNKS = 8
CONTEXT_TURNS = 3
HEAD = "crisis_head"
#: the head on the larger frozen encoder (:mod:`empathy_nlg.perception.crisis_mpnet`)
LARGE_HEAD = "crisis_head_mpnet"
#: the larger encoder's LoRA adapter, next to a ``crisis_head_mpnet`` trained end to end
LARGE_ADAPTER_DIR = "crisis_encoder_mpnet"
#: the learned imminent-danger cue on the larger encoder's features (method, point 5)
IMMINENT_HEAD = "crisis_imminent_mpnet"
IMMINENT_CUE = "imminent-head"
CONTEXT_ONLY = "context-only"


def chunks(text: str, size: int = CHUNK_WORDS, limit: int = MAX_CHUNKS) -> List[str]:
    """``text`` in consecutive pieces of at most ``size`` words (at most ``limit`` pieces)."""
    words = text.split()
    if not words:
        return ["."]
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)][:limit]


def _earlier(texts: Sequence[str]):
    """Each of the user's previous :data:`CONTEXT_TURNS` non-empty messages with what came before it
    (``texts[:end]``, that message last), newest first."""
    texts = list(texts)
    for end in range(len(texts) - 1, max(len(texts) - 1 - CONTEXT_TURNS, 0), -1):
        if texts[end - 1].strip():
            yield texts[:end]


def features(message_chunks: np.ndarray, context: Optional[np.ndarray]) -> np.ndarray:
    """``[mean chunk, max chunk, mean context]`` (context: zeros when the message opens the talk)."""
    m = np.asarray(message_chunks, dtype=np.float32)
    dim = m.shape[1]
    ctx = np.zeros(dim, dtype=np.float32) if context is None or len(context) == 0 else np.asarray(context, np.float32).mean(0)
    return np.concatenate([m.mean(0), m.max(0), ctx]).astype(np.float32)


class CrisisDetector:
    """Trained classifier over message + context, with the pattern floor (see module doc).

    ``head`` is ``(model, config)`` from :func:`empathy_nlg.perception.common.load_head` (config
    holds ``threshold``); without it only the patterns decide. ``embed`` turns texts into
    normalised sentence embeddings (the perceiver's cached encoder).
    """

    def __init__(self, head=None, embed=None, own_encoder: bool = False, large=None, large_head=None,
                 imminent_head=None) -> None:
        self.model, self.config = head if head is not None else (None, {})
        self.embed = embed
        #: ``embed`` is the detector's own fine-tuned encoder: embeddings of the shared encoder that a
        #: caller passes in (``message_embedding``) are of another space and are ignored
        self.own_encoder = own_encoder
        #: the larger frozen encoder (:mod:`empathy_nlg.perception.crisis_mpnet`) and its head: when both
        #: are there they decide, and the MiniLM head above is only the gate that says when they run
        self.large, self.large_model, self.large_config = None, None, {}
        if large is not None and large_head is not None and self.model is not None:
            self.large = large
            self.large_model, self.large_config = large_head
        #: the learned imminent-danger cue (``crisis_imminent_mpnet``): only with the larger encoder
        self.imminent_model, self.imminent_config = (imminent_head if imminent_head is not None and self.large is not None
                                                     else (None, {}))
        self.imminent_threshold = float(self.imminent_config.get("threshold", 1.0))
        #: whether the learned cue, like a word cue, makes a message the classifier is concerned about
        #: a crisis (the resources at once) or only asks the check-in
        self.imminent_escalates = bool(self.imminent_config.get("escalates", False))
        #: False switches the learned cue off (A/B evaluations: ``eval-crisis --no-imminent``)
        self.use_imminent = self.imminent_model is not None
        active = self.large_config if self.large is not None else self.config
        self.threshold = float(active.get("threshold", 0.5))
        self.concern_threshold = float(active.get("concern_threshold", self.threshold))
        self.cue_gate = float(active.get("cue_gate", CUE_GATE))
        #: MiniLM-head probability at or above which the larger encoder runs (any pattern or cue in the
        #: user's recent messages makes it run too)
        self.gate = float(self.large_config.get("gate_threshold", 0.0))
        #: how the deciding probability is made when the larger encoder runs: its head alone
        #: (``large``) or the mean of both heads (``mean``)
        self.combine = str(self.large_config.get("combine", "large"))
        #: an earlier message at or above the MiniLM head's own check-in threshold opens the gate too
        self.context_gate = float(self.large_config.get("context_gate_threshold", self.config.get("concern_threshold", 1.0)))
        if self.model is None:
            self._version = "patterns-only"
        elif self.large is not None:
            self._version = f"{RULES_VERSION}+{self.large_config.get('version', 'large')}"
        else:
            self._version = f"{RULES_VERSION}+{self.config.get('version', 'no-classifier')}"
        #: messages the gate let through to the larger encoder / kept from it (for bench and eval)
        self.gate_stats = {"large": 0, "gated_out": 0}
        #: v13: a concern that only the context raises asks nothing unless the context holds danger
        #: (False: v12's behaviour, for ablations)
        self.concern_needs_danger_in_context = True

    @property
    def version(self) -> str:
        """Rules and heads that decide, the learned cue's version included while it is in use."""
        if self.use_imminent:
            return f"{self._version}+{self.imminent_config.get('version', 'imminent')}"
        return self._version

    @classmethod
    def load(cls, art_dir, embed=None, encoder_path=None, device=None, crisis_encoder=None,
             crisis_dtype: str = "float32") -> "CrisisDetector":
        """The committed head from ``art_dir`` (patterns only, with a warning, when it is missing).

        A head trained end to end (config ``encoder: tuned``) brings its own encoder adapter
        (:mod:`empathy_nlg.perception.crisis_encoder`); ``embed`` is then not used.
        ``crisis_encoder`` (the ``perception.crisis_encoder`` setting: a prepared folder's name or path,
        e.g. ``all-mpnet-base-v2``) adds the larger encoder and its head (``crisis_head_mpnet``) with the
        MiniLM head as their gate; when the encoder or that head is missing the MiniLM head decides
        alone, with a logged warning (never an error). ``crisis_dtype``: that encoder's weights
        (``perception.crisis_encoder_dtype``; ``auto`` → bf16 where native)."""
        import logging

        from empathy_nlg.perception.common import load_head

        logger = logging.getLogger(__name__)
        try:
            head = load_head(art_dir, HEAD)
        except FileNotFoundError:
            logger.warning("no %s in %s: the crisis flag uses patterns only "
                           "(train it: empathy-nlg train-perception --task crisis)", HEAD, art_dir)
            return cls(None, embed)
        if head[1].get("encoder") == "tuned":
            from empathy_nlg.perception.crisis_encoder import TunedEncoder

            tuned = TunedEncoder.load(art_dir, encoder_path, device)
            tuned.gloss_emoji = bool(head[1].get("emoji_gloss", False))  # as it was trained
            return cls(head, tuned.encode, own_encoder=True)
        if crisis_encoder:
            from empathy_nlg.perception.crisis_mpnet import is_prepared, load_encoder, resolve

            if not is_prepared(resolve(crisis_encoder)):
                load_encoder(crisis_encoder)  # logs why (not prepared) and how to prepare it
                return cls(head, embed)
            try:
                large_head = load_head(art_dir, LARGE_HEAD)
            except FileNotFoundError:
                logger.warning("no %s in %s: the crisis classifier falls back to its MiniLM head", LARGE_HEAD, art_dir)
                return cls(head, embed)
            # a head trained end to end with the larger encoder (v15 on) brings that encoder's LoRA adapter
            adapter = (Path(art_dir) / str(large_head[1].get("adapter_dir", LARGE_ADAPTER_DIR))
                       if large_head[1].get("encoder") == "tuned" else None)
            large = load_encoder(crisis_encoder, device=device, dtype=crisis_dtype,
                                 adapter=adapter)  # None (with a warning) when it cannot load
            if large is not None:
                trained_on = large_head[1].get("encoder_name")
                if trained_on and trained_on != large.path.name:
                    logger.warning("%s was trained on %s, not %s: the crisis classifier falls back to its MiniLM head",
                                   LARGE_HEAD, trained_on, large.path.name)
                    return cls(head, embed)
                try:
                    imminent = load_head(art_dir, IMMINENT_HEAD)
                except FileNotFoundError:
                    imminent = None  # an older artefact set: the word cues alone
                if imminent is not None and (imminent[1].get("encoder_name") not in (None, large.path.name)
                                             or adapter is not None):
                    # it reads the frozen encoder's features: not those of another encoder or of an adapter
                    logger.warning("%s was trained on the frozen %s, not on %s: not used", IMMINENT_HEAD,
                                   imminent[1].get("encoder_name"), large.name)
                    imminent = None
                return cls(head, embed, large=large, large_head=large_head, imminent_head=imminent)
        return cls(head, embed)

    def probability(self, texts: Sequence[str], message_embedding: Optional[np.ndarray] = None) -> Optional[float]:
        """P(crisis) of the last of ``texts`` given the earlier ones by the MiniLM head (None without one)."""
        if self.model is None or self.embed is None or not texts:
            return None
        from empathy_nlg.perception.common import predict_head

        message = texts[-1]
        pieces = chunks(message)
        if len(pieces) == 1 and message_embedding is not None and not self.own_encoder:
            m = np.asarray(message_embedding, dtype=np.float32).reshape(1, -1)
        else:
            m = self.embed(pieces)
        previous = [t for t in texts[:-1] if t.strip()][-CONTEXT_TURNS:]
        ctx = self.embed(previous) if previous else None
        return float(predict_head(self.model, features(m, ctx)[None, :], "bce")[0, 0])

    def large_probability(self, texts: Sequence[str], imminent: Optional[Dict[str, float]] = None) -> Optional[float]:
        """P(crisis) by the larger encoder's head (None without it); embeddings LRU-cached per text.
        ``imminent`` (a dict) receives ``p``, the learned imminent-danger cue's probability on the
        same features, when that head is in use."""
        if self.large is None or not texts:
            return None
        from empathy_nlg.perception.common import predict_head

        pieces = chunks(texts[-1])
        previous = [t for t in texts[:-1] if t.strip()][-CONTEXT_TURNS:]
        emb = self.large.encode(pieces + previous)  # one batch: the message's chunks and the uncached context
        m, ctx = emb[: len(pieces)], (emb[len(pieces):] if previous else None)
        x = features(m, ctx)[None, :]
        if imminent is not None and self.use_imminent:
            imminent["p"] = float(predict_head(self.imminent_model, x, "bce")[0, 0])
        return float(predict_head(self.large_model, x, "bce")[0, 0])

    def context_opens_gate(self, texts: Sequence[str]) -> bool:
        """True when one of the user's previous :data:`CONTEXT_TURNS` messages, judged by the MiniLM head
        in its own context, reached that head's own check-in threshold (``context_gate``): a plan told
        over several messages ("gave my guitar to my cousin" / "sorted the bank stuff" / "so
        everything's taken care of now") keeps the larger encoder reading the conversation. Cheap:
        those embeddings are in the shared cache; with this threshold it opens the gate for < 1 % more
        of ordinary messages (ED valid, the dev chat scripts)."""
        for upto in _earlier(texts):
            p = self.probability(upto)
            if p is not None and p >= self.context_gate:
                return True
        return False

    def classify(self, texts: Sequence[str], message_embedding: Optional[np.ndarray] = None,
                 force_large: bool = False, imminent: Optional[Dict[str, float]] = None) -> Optional[float]:
        """The deciding classifier's probability: the larger encoder's head (or, with ``combine: mean``,
        the mean of both heads) when it is loaded and the gate opens (MiniLM head ≥ ``gate``, or ``force_large``: a pattern or cue in the recent messages);
        gated out, 0.0 (the MiniLM head is sure enough it is ordinary talk); otherwise the MiniLM head's.
        ``imminent``: see :meth:`large_probability` (left empty when the larger encoder does not run)."""
        p_small = self.probability(texts, message_embedding)
        if self.large is None or p_small is None:
            return p_small
        if force_large or p_small >= self.gate or self.context_opens_gate(texts):
            self.gate_stats["large"] += 1
            p_large = self.large_probability(texts, imminent)
            # ``combine: mean`` (v8): the two heads' average ranks better on dev than either alone
            return 0.5 * (p_small + p_large) if self.combine == "mean" else p_large
        self.gate_stats["gated_out"] += 1
        return 0.0

    def context_holds_danger(self, texts: Sequence[str]) -> bool:
        """True when one of the user's previous :data:`CONTEXT_TURNS` messages, judged in its own
        context, reached the check-in threshold or matched a pattern or a cue (the learned one
        included): "she's asleep now"
        after "I've counted out the pills" (the context holds a plan), not "bus till payday then"
        after "someone nicked my bike" (nothing in it is danger)."""
        for upto in _earlier(texts):
            if any(not r.startswith("negated:") for r in pattern_matches(upto[-1])[1]) or cue_matches(upto[-1]):
                return True
            imminent: Dict[str, float] = {}
            q = self.classify(upto, force_large=True, imminent=imminent)
            if (q is not None and q >= self.concern_threshold) or imminent.get("p", 0.0) >= self.imminent_threshold:
                return True  # the learned cue counts as a cue here too
        return False

    def message_alone(self, texts: Sequence[str], emb: Optional[np.ndarray], reasons: Sequence[str]) -> Optional[float]:
        """The classifier's probability for the latest message read without its context; ``None``
        when there is no context or a pattern (``reasons``, negations aside) matched the message:
        then the message speaks for itself and its context cannot be what raised it."""
        if len(texts) < 2 or any(not r.startswith("negated:") for r in reasons):
            return None
        return self.classify([texts[-1]], emb, force_large=True)

    def concern_from_context_alone(self, texts: Sequence[str], emb: Optional[np.ndarray], reasons: Sequence[str]) -> bool:
        """Whether the classifier's concern about the latest message comes from its context alone:
        the message by itself stays under the check-in threshold, nothing lexical matched it, and
        no earlier message holds danger (:meth:`context_holds_danger`)."""
        alone = self.message_alone(texts, emb, reasons)
        return alone is not None and alone < self.concern_threshold and not self.context_holds_danger(texts)

    @property
    def lexical_floor(self) -> float:
        """The crisis score under which the classifier is sure enough that a message is ordinary that
        a lexical signal alone asks nothing: its ``cue_gate`` on the score's scale. A plan / timing /
        farewell cue asks the check-in only above the cue gate (:meth:`detect`); Rasa's NLU ``crisis``
        intent, a keyword-trained signal of the same kind, is held to the same bar by the engine's
        safety policy. 0.0 without a classifier: then every such signal asks."""
        return self.scaled(self.cue_gate) if self.model is not None else 0.0

    def scaled(self, p: float) -> float:
        """The classifier's probability mapped piecewise-linearly so that ``threshold`` → 0.5."""
        t = min(max(self.threshold, 1e-6), 1 - 1e-6)
        return 0.5 * p / t if p < t else 0.5 + 0.5 * (p - t) / (1 - t)

    def detect(self, texts: Sequence[str], embeddings: Optional[np.ndarray] = None) -> CrisisResult:
        """Judge the last of the user's ``texts`` (the earlier ones are its context).

        ``embeddings`` (optional, aligned with ``texts``) saves re-encoding the message."""
        if not texts:
            return CrisisResult(crisis=False, score=0.0, reasons=[])
        score, reasons = pattern_matches(texts[-1])
        if any(not r.startswith("negated:") for r in reasons):
            score = max(score, 0.5)
        emb = None if embeddings is None or len(embeddings) == 0 else embeddings[-1]
        recent = [t for t in list(texts)[-WINDOW_TURNS:] if t.strip()]
        window, earlier = ", ".join(recent), ", ".join(recent[:-1])
        matched: Dict[Any, Any] = {}  # the patterns and the cues each read the window once per call

        def on_window(match):
            if match not in matched:
                matched[match] = match(window)
            return matched[match]

        # the larger encoder runs whenever a pattern or a cue matches anywhere in the recent messages
        lexical = bool(reasons) or (self.large is not None and (bool(on_window(cue_matches))
                                                                  or on_window(pattern_matches)[0] > 0))
        imminent: Dict[str, float] = {}
        p = self.classify(list(texts), emb, force_large=lexical, imminent=imminent)
        concern = False
        if p is not None:
            if p >= self.threshold:
                reasons.append(f"classifier:{p:.2f}")
                alone = self.message_alone(texts, emb, reasons[:-1])
                if alone is not None and alone < self.threshold:
                    if self.context_holds_danger(texts):
                        # flagged only because of what was said before: the engine's follow-up
                        # state answers these instead of repeating the resources
                        reasons.append(CONTEXT_ONLY)
                    elif self.concern_needs_danger_in_context and alone < self.concern_threshold:
                        # v13: nor worth a question — the message alone is ordinary and nothing
                        # said before it is danger ("bus till payday then" after a stolen bike)
                        reasons[-1] = f"context-concern-dropped:{p:.2f}"
                        p = min(p, 0.98 * min(self.concern_threshold, self.threshold))
                    else:
                        # v11: context can only make a message dangerous if it holds danger
                        # itself ("bus till payday then" after a stolen bike scored 0.99 in
                        # context): a concern (the check-in question), never the resources
                        reasons[-1] = f"concern:{p:.2f}"
                        concern = True
                        p = min(p, 0.98 * self.threshold)  # a score of 0.49: under the flag
            elif p >= self.concern_threshold:
                if self.concern_needs_danger_in_context and self.concern_from_context_alone(texts, emb, reasons):
                    # v13: the same rule for the question as v11's for the flag — what was said
                    # before can make a message worth asking about only if it holds danger itself
                    # ("ok. will try the depot again tmrw" after a lost phone that was not backed up)
                    reasons.append(f"context-concern-dropped:{p:.2f}")
                    p = min(p, 0.98 * self.concern_threshold)
                else:
                    reasons.append(f"concern:{p:.2f}")
                    concern = True
            score = max(score, self.scaled(p))
        if score < 0.5 and len(recent) > 1:
            # a plan told over several messages ("I'm holding my dad's revolver" / "it's loaded"): the
            # patterns read the user's recent messages together, and a match that reaches into the
            # latest one flags it (marked context-only: it needs the earlier messages). A statement
            # wholly inside an earlier message was judged at its own turn and does not flag again.
            strong = lambda found: {r for r in found[1] if not r.startswith("negated:")}  # noqa: E731
            spanning = strong(on_window(pattern_matches)) - strong(pattern_matches(earlier))
            if spanning:
                score = max(score, 0.5)
                reasons.extend([f"window:{r}" for r in sorted(spanning)] + [CONTEXT_ONLY])
        cues = []
        if score < 0.5:
            cues = cue_matches(texts[-1])
            if len(recent) > 1:
                before = set(cue_matches(earlier)) | set(cues)
                cues += [c for c in on_window(cue_matches) if c not in before]
            if imminent.get("p", 0.0) >= self.imminent_threshold:
                # the learned cue: a plan, timing or farewell said in words no cue lists
                cues.append(IMMINENT_CUE)
                reasons.append(f"imminent:{imminent['p']:.2f}")
        if cues:
            reasons.extend(f"cue:{c}" for c in cues)
            if p is None or p >= self.cue_gate:
                concern = True
            if p is not None and p >= self.concern_threshold and (self.imminent_escalates or cues != [IMMINENT_CUE]):
                # a plan / means / timing / farewell cue in a message the classifier is already
                # concerned about: imminent danger, the resources now (not a question first)
                score = max(score, 0.5 + 0.5 * (p - self.concern_threshold) / max(1 - self.concern_threshold, 1e-6))
                score = max(score, 0.5)
        crisis = score >= 0.5
        return CrisisResult(crisis=crisis, score=round(float(score), 4), reasons=sorted(set(reasons)),
                            concern=concern and not crisis)


def load_eval_set(path: Path = EVAL_SET) -> Tuple[List[str], List[int]]:
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "crisis" not in data or "non_crisis" not in data:
        raise ValueError(f"{path}: expected keys 'crisis' and 'non_crisis'")
    texts = list(data["crisis"]) + list(data["non_crisis"])
    return texts, [1] * len(data["crisis"]) + [0] * len(data["non_crisis"])


def evaluate(detector: CrisisDetector, path: Path = EVAL_SET) -> Dict[str, object]:
    """Precision/recall (percent) on the YAML set, plus the misses and false alarms."""
    texts, gold = load_eval_set(path)
    pred = [detector.detect([t]).crisis for t in texts]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum((not p) and g for p, g in zip(pred, gold))
    return {
        "n_crisis": sum(gold), "n_non_crisis": len(gold) - sum(gold),
        "precision": 100.0 * tp / max(tp + fp, 1), "recall": 100.0 * tp / max(tp + fn, 1),
        "false_alarms": [t for t, p, g in zip(texts, pred, gold) if p and not g],
        "misses": [t for t, p, g in zip(texts, pred, gold) if g and not p],
    }
