"""``empathy-nlg converse-eval``: replay multi-turn user scripts and measure what a person reads.

Single-reply metrics (``empathy-nlg evaluate``) cannot see what goes wrong over a conversation:
the same reply twice, every reply opening with the same words, congratulations on bad news,
replies that ignore what was said, or the assistant quietly falling back to templates. This
command replays whole conversations — user turns only, the assistant answers each — and scores
the replies a person would actually read.

Inputs (exactly one):

* ``--script FILE`` — JSONL, one conversation per line:
  ``{"id": "optional", "polarity": "positive"|"negative"|"mixed", "turns": ["user msg", ...]}``,
  optionally with **persona probes** (the persona memory benchmark, ``configs/conversations/persona.jsonl``):
  ``"persona": {"recall": ["biscuit", "dog"], "restart_before": [3], "relevant": [3], "irrelevant": [4]}``
  — the words that show the remembered fact, the turns (1-based) before which the conversation
  restarts (a new Rasa session for the same sender: engine mode starts a new tracker with
  ``session_started``, REST mode sends ``/session_start``), and the turns where using the fact is
  relevant / not relevant.
* ``--ed FILE [--limit N]`` — an EmpatheticDialogues ``ed-jsonl`` file; the *speaker* turns of each
  conversation are replayed as the user's turns, polarity = MIME's polarity of the conversation's
  emotion (:func:`empathy_nlg.taxonomy.polarity_of`).

Modes:

* **engine** (default) — the engine is built in-process exactly like ``empathy-nlg serve`` builds
  it (``--config``, ``--generator``, ``--set KEY=VALUE``; state in a fresh SQLite file inside
  ``--out``), and each user turn goes through what Rasa and the ``agent/`` components do:
  ``engine.perceive(text, history, sender_id, message_id, turn_index)`` then ``engine.nlg(request)``
  with a Rasa-style NLG request whose tracker events carry the perception in
  ``parse_data["empathy"]``.
* **REST** (``--rest URL``) — each user turn is POSTed to a running Rasa REST channel; the reply is
  the concatenation of the returned messages' texts. A reply is a *template* if it equals (after
  whitespace normalisation) a response text of the Rasa domain (``--domain``), or a *crisis*
  script if it contains the text of ``utter_crisis_support``.

Metrics (per conversation and overall; turns of all conversations are pooled for "overall").
Rates are percentages (0–100) of all replies unless said otherwise. Word tokens: lower-cased
``[a-z0-9]+('[a-z]+)*`` (curly apostrophes straightened).

* ``repeat_rate`` — % of replies whose token Jaccard (sets of word tokens) with ANY earlier reply of
  the same conversation is ≥ 0.8 (:data:`REPEAT_JACCARD`).
* ``opening_repeat_rate`` — % of replies whose first 3 word tokens (:data:`OPENING_TOKENS`) equal
  those of an earlier reply of the same conversation.
* ``polarity_mismatch_rate`` — a transparent lexical judge: a reply is *sympathetic* if it contains
  a phrase of :data:`SYMPATHY_MARKERS`, *celebratory* if it contains one of
  :data:`CELEBRATION_MARKERS` (whole words; ``*`` = any ending). The expected polarity of a turn is
  the conversation's polarity for ``positive``/``negative`` scripts; for ``mixed`` scripts and ED
  replays it is the engine's perceived polarity of that turn (engine mode, or REST with the engine's
  ``custom`` forwarded), else the turn is not judged. A mismatch is a sympathetic-only reply to a
  positive turn or a celebratory-only reply to a negative turn. Rate over the judged turns
  (``polarity_judged``).
* ``replacement_rate`` — % of replies that offer to replace a person or an animal the user spoke of
  ("a new dog", "another husband") in a turn not expected to be good news: the rule of the
  reranker's replacement guard (:func:`empathy_nlg.text.replaces`), so the rate shows the guard's
  effect in an ablation; with the guard on only a turn whose every candidate it vetoed can count.
* ``grounded_rate`` — % of replies sharing at least one content word with what the user said so far
  in the conversation: word tokens minus :data:`STOPWORDS` (pronouns, auxiliaries, fillers such as
  "really", "just", "so", "feel", "sounds", "hear"), possessive ``'s`` dropped, each word lightly
  normalised (words longer than 4 characters lose one trailing "ing", "ed", "es" — only after s,
  x, z, ch, sh — or "s", not the "s" of "ss": exams → exam, passed → pass, classes → class,
  notes → note).
* ``er_rate``, ``ip_rate``, ``ex_rate`` — % of replies the EPITOME response classifiers
  (``empathy_nlg.perception.cm.load_response_classifiers()``) rate as showing emotional reaction,
  interpretation, exploration (weak + strong); seeker post = the user turn the reply answers. Empty
  replies count as "no". ``null`` without the classifiers (``--no-cm-scorer``).
* ``mean_reply_words`` — mean number of word tokens per reply.
* persona probes (only for scripts with ``persona``): ``persona_recall_rate`` — % of the
  *relevant* probe turns whose reply contains a recall word that the user's message of that turn
  does not (the reply brought the remembered fact back); ``persona_intrusion_rate`` — the same on
  the *irrelevant* probe turns (the reply brought it up where it does not belong);
  ``persona_reached_rate`` — % of probe turns whose generator input held the fact (a recall word in
  ``custom.generation.persona_sentences``: the extractor, SQL memory and session restart worked;
  ``null`` for generators that do not report their persona). Words are compared after the
  grounding normalisation (:func:`normalise_word`).
* ``p50_ms``, ``p95_ms``, ``max_ms`` — latency per turn (engine: wall time of perceive + nlg;
  REST: the HTTP round trip), percentiles by linear interpolation.
* routing — ``generated_share``: % of turns answered by a generator; ``template_turns``: turns
  answered by a domain template (``template``, ``template-fallback``, or REST text match);
  ``crisis_turns``: turns answered by the crisis script (``crisis-*`` generators, or REST text
  containing ``utter_crisis_support``); ``empty_replies``: turns with no text at all;
  ``errors``: REST turns that failed (timeout, HTTP error) — they also count as empty.

Outputs in ``--out``: ``conversations.jsonl`` (one line per conversation, written as each one
finishes: its turns with user text, reply, generator, response, latency, per-turn metrics and
flags, and the engine's ``custom``), ``summary.json`` and ``report.md``.

The metrics are pure functions over transcripts (:func:`score_conversation`,
:func:`aggregate`); the replay loops take the engine / HTTP endpoint and the EPITOME scorer as
parameters (:class:`EngineReplayer`, :class:`RestReplayer`, :func:`benchmark`). Nothing is
parsed or loaded at import time.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple

from empathy_nlg.evaluation.harness import _jsonable
from empathy_nlg.taxonomy import CM_CODES, polarity_of
from empathy_nlg.text import replaces

log = logging.getLogger(__name__)

CONVERSATIONS = "conversations.jsonl"
SUMMARY = "summary.json"
REPORT = "report.md"
STATE_DB = "converse-state.db"

SCRIPT_POLARITIES: Tuple[str, ...] = ("positive", "negative", "mixed")
DEFAULT_RESPONSE = "utter_empathize"
REPEAT_JACCARD = 0.8
OPENING_TOKENS = 3
REST_TIMEOUT_S = 120.0

# Routing: generator names that are not a generator's reply.
TEMPLATE_GENERATORS: Tuple[str, ...] = ("template", "template-fallback")
CRISIS_GENERATOR_PREFIX = "crisis"  # crisis-override, crisis-followup, …
CRISIS_RESPONSE = "utter_crisis_support"
KINDS: Tuple[str, ...] = ("generated", "template", "crisis", "empty")

# The lexical polarity judge. Phrases match as whole words on the lower-cased reply (curly
# apostrophes straightened); a trailing "*" matches any word ending.
SYMPATHY_MARKERS: Tuple[str, ...] = (
    "sorry", "so sad", "that's sad", "how sad", "that sucks", "oh no", "terrible", "awful",
    "that's rough", "that's tough", "so rough", "so tough", "unfortunate*", "heartbreak*",
    "must be hard", "must be difficult", "must have been hard", "must have been difficult",
    "must be painful", "must have been painful", "must be so hard", "must be really hard",
    "condolence*", "my sympathies", "that's hard", "that's difficult", "that's painful",
    "that's frustrating", "how frustrating", "that's scary", "how scary", "devastat*",
    "hang in there", "poor thing", "sounds hard", "sounds difficult", "sounds tough", "sounds rough",
    "sounds painful", "sounds scary", "sounds frustrating", "sounds stressful",
)
CELEBRATION_MARKERS: Tuple[str, ...] = (
    "congrat*", "awesome", "amazing", "great news", "good news", "wonderful", "fantastic",
    "so happy for you", "happy for you", "glad to hear", "exciting", "how exciting",
    "that's great", "that's so great", "that's really great", "good for you", "well done",
    "proud of you", "way to go", "nice job", "great job", "good job", "brilliant",
    "that's exciting", "yay", "hooray", "woohoo", "what a great", "how wonderful", "so cool",
    "that's cool", "that's nice", "lucky you", "you deserve it", "sounds great", "sounds fun",
    "sounds like fun", "that's wonderful",
)

# Grounding: words that carry no content of their own.
STOPWORDS = frozenset(
    """
    a an the and or but if then than so because as of at by for with about against between into
    through during before after above below to from up down in out on off over under again further
    once here there when where why how all any both each few more most other some such no nor not
    only own same too very can will just should now also even still ever yet maybe perhaps well
    i me my myself mine we us our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves one ones someone
    something anyone anything everyone everything nothing somebody anybody everybody nobody
    what which who whom whose this that these those
    am is are was were be been being have has had having do does did doing done would could might
    must shall may ought get gets got getting go goes going gone went make makes made let lets
    i'm i've i'd i'll you're you've you'd you'll he's she's it's we're we've we'd we'll they're
    they've they'd they'll that's there's here's what's who's how's where's let's
    isn't aren't wasn't weren't don't doesn't didn't haven't hasn't hadn't won't wouldn't can't
    cannot couldn't shouldn't mustn't mightn't
    im ive id ill youre dont doesnt didnt cant wont isnt wasnt thats theres whats
    really just so very quite pretty kind sort like lot lots bit little much many always never
    often sometimes actually basically totally definitely probably literally honestly seriously
    ok okay oh yes yeah yep no nope hey hi hello hmm um uh ah wow well sure right thanks thank
    please sorry lol haha hahaha lmao omg gonna wanna gotta kinda
    feel feels felt feeling feelings sound sounds sounded hear heard hearing think thought know
    knew tell told say said see seem seems want wanted need needed thing things way time
    today yesterday tomorrow day now lately recently
    """.split()
)
GROUNDING_SUFFIXES: Tuple[str, ...] = ("ing", "ed", "es", "s")
_ES_STEMS: Tuple[str, ...] = ("s", "x", "z", "ch", "sh")  # "es" is stripped only after these

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_PLACEHOLDER = re.compile(r"{[A-Za-z_][\w-]*}")

DEFINITIONS: Dict[str, str] = {
    "conversations": "conversations replayed",
    "turns": "user turns replayed (one reply each)",
    "repeat_rate": f"% of replies whose word-token Jaccard with ANY earlier reply of the same conversation is >= {REPEAT_JACCARD}",
    "opening_repeat_rate": f"% of replies whose first {OPENING_TOKENS} word tokens equal those of an earlier reply of the same conversation",
    "polarity_mismatch_rate": "% of judged turns with a sympathetic-only reply to a positive turn or a celebratory-only reply to a negative turn (lexical marker lists); expected polarity = the script's polarity, or the engine's perceived polarity for mixed scripts and ED replays",
    "polarity_judged": "turns whose expected polarity was known (the denominator of polarity_mismatch_rate)",
    "grounded_rate": "% of replies sharing at least one content word (stopwords removed, light suffix normalisation) with what the user said so far in the conversation",
    "replacement_rate": "% of replies offering to replace a person or an animal the user spoke of ('a new dog', 'another husband') in a turn not expected to be good news; the same rule as the reranker's replacement guard (empathy_nlg.text.replaces), so with the guard on only a turn whose every candidate it vetoed can count",
    "er_rate": "% of replies the EPITOME response classifier rates as emotional reaction (seeker post = the user turn answered)",
    "ip_rate": "% of replies the EPITOME response classifier rates as interpretation",
    "ex_rate": "% of replies the EPITOME response classifier rates as exploration",
    "mean_reply_words": "mean word tokens per reply",
    "p50_ms": "median latency per turn (engine: perceive + nlg wall time; REST: HTTP round trip)",
    "p95_ms": "95th percentile latency per turn (linear interpolation)",
    "max_ms": "slowest turn",
    "generated_share": "% of turns answered by a generator (not a template, the crisis script or nothing)",
    "template_turns": "turns answered by a domain template (template, template-fallback, or a REST reply equal to a domain text)",
    "crisis_turns": "turns answered by the scripted crisis texts",
    "empty_replies": "turns whose reply had no text",
    "errors": "REST turns that failed (timeout, HTTP error); counted as empty replies too",
    "persona_relevant_probes": "persona scripts: turns where bringing back the remembered fact is relevant",
    "persona_recall_rate": "% of the relevant persona probes whose reply holds a recall word that the user's message of that turn does not",
    "persona_irrelevant_probes": "persona scripts: turns where the remembered fact does not belong",
    "persona_intrusion_rate": "% of the irrelevant persona probes whose reply holds a recall word that the user's message does not (brought up where it does not belong)",
    "persona_reached_rate": "% of persona probes whose generator input held the fact (a recall word in custom.generation.persona_sentences); null when the generator does not report its persona",
}
METRIC_ORDER: Tuple[str, ...] = tuple(DEFINITIONS)


class ConverseError(RuntimeError):
    """The replay cannot go on (the REST endpoint is unreachable, …); the message says why."""


# ======================================================================================== inputs
@dataclass
class ScriptConversation:
    """One conversation to replay: the user's turns and what polarity they carry."""

    id: str
    polarity: str  # positive | negative | mixed
    turns: List[str]
    source: str = "script"  # script | ed
    emotion: Optional[str] = None  # ED replays: the conversation's label
    persona: Optional["PersonaProbes"] = None  # the persona memory benchmark's probes

    def restarts_before(self, turn: int) -> bool:
        """Whether the conversation restarts (a new Rasa session, same sender) before 1-based ``turn``."""
        return self.persona is not None and turn in self.persona.restart_before

    @property
    def judge_by_perception(self) -> bool:
        """Whether the expected polarity of each turn comes from the engine's perception."""
        return self.source != "script" or self.polarity not in ("positive", "negative")


@dataclass
class PersonaProbes:
    """What a persona-memory script checks: the words that show the remembered fact, where the
    conversation restarts, and the turns (1-based) where bringing the fact back is relevant or not."""

    recall: List[str]
    restart_before: List[int]
    relevant: List[int]
    irrelevant: List[int]

    def to_dict(self) -> Dict[str, Any]:
        return {"recall": list(self.recall), "restart_before": list(self.restart_before),
                "relevant": list(self.relevant), "irrelevant": list(self.irrelevant)}


def parse_persona_probes(rec: Any, n_turns: int) -> PersonaProbes:
    """The ``persona`` object of a script line; a ``ValueError`` says what is wrong with it."""
    if not isinstance(rec, dict):
        raise ValueError("'persona' must be an object {recall, restart_before?, relevant?, irrelevant?}")
    unknown = sorted(set(rec) - {"recall", "restart_before", "relevant", "irrelevant"})
    if unknown:
        raise ValueError(f"'persona' has unknown keys {unknown}")
    recall = rec.get("recall")
    if not isinstance(recall, list) or not recall or not all(isinstance(w, str) and w.strip() for w in recall):
        raise ValueError("'persona.recall' must be a non-empty list of words")
    words = list(dict.fromkeys(normalise_word(w.strip().lower()) for w in recall))
    never = [w for w in recall if not content_words(w)]
    if never:
        raise ValueError(f"'persona.recall' words {never} are stopwords: a reply's use of them is never counted")

    def turns_of(key: str, low: int) -> List[int]:
        vals = rec.get(key, [])
        if not isinstance(vals, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            raise ValueError(f"'persona.{key}' must be a list of turn numbers")
        bad = [v for v in vals if not low <= v <= n_turns]
        if bad:
            raise ValueError(f"'persona.{key}' names turns {bad} outside {low}..{n_turns}")
        return sorted(set(vals))

    probes = PersonaProbes(words, turns_of("restart_before", 2), turns_of("relevant", 1), turns_of("irrelevant", 1))
    both = set(probes.relevant) & set(probes.irrelevant)
    if both:
        raise ValueError(f"'persona' turns {sorted(both)} are both relevant and irrelevant")
    if not probes.relevant and not probes.irrelevant:
        raise ValueError("'persona' names no relevant or irrelevant turn to probe")
    return probes


def read_script(path: str | Path, limit: Optional[int] = None) -> List[ScriptConversation]:
    """Read a JSONL conversation script; a ``ValueError`` names the line of any bad record."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"script {p} does not exist")
    out: List[ScriptConversation] = []
    seen: Dict[str, int] = {}
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue

            def bad(problem: str) -> ValueError:
                return ValueError(f"{p}: line {lineno}: {problem}")

            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise bad(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise bad("expected a JSON object {\"polarity\": …, \"turns\": […]}")
            conv_id = rec.get("id")
            if conv_id is None:
                conv_id = f"line{lineno}"
            elif not isinstance(conv_id, (str, int)) or not str(conv_id).strip():
                raise bad("'id' must be a non-empty string")
            conv_id = str(conv_id).strip()
            if conv_id in seen:
                raise bad(f"duplicate id {conv_id!r} (first on line {seen[conv_id]})")
            polarity = rec.get("polarity")
            if polarity is None:
                raise bad("missing 'polarity' (one of " + ", ".join(SCRIPT_POLARITIES) + ")")
            if not isinstance(polarity, str) or polarity.strip().lower() not in SCRIPT_POLARITIES:
                raise bad(f"bad polarity {polarity!r}; expected one of " + ", ".join(SCRIPT_POLARITIES))
            turns = rec.get("turns")
            if turns is None:
                raise bad("missing 'turns' (a list of user messages)")
            if not isinstance(turns, list):
                raise bad("'turns' must be a list of user messages")
            if not turns:
                raise bad("'turns' is empty: nothing to replay")
            for j, t in enumerate(turns, start=1):
                if not isinstance(t, str) or not t.strip():
                    raise bad(f"turn {j} must be a non-empty string")
            probes = None
            if rec.get("persona") is not None:
                try:
                    probes = parse_persona_probes(rec["persona"], len(turns))
                except ValueError as exc:
                    raise bad(str(exc)) from None
            seen[conv_id] = lineno
            out.append(ScriptConversation(conv_id, polarity.strip().lower(), [t.strip() for t in turns], persona=probes))
            if limit and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{p}: no conversations found")
    return out


def read_ed_replay(path: str | Path, limit: Optional[int] = None) -> List[ScriptConversation]:
    """The speaker turns of each ED conversation as user turns (first ``limit`` conversations)."""
    from empathy_nlg.datasets import read_ed_jsonl

    out: List[ScriptConversation] = []
    for conv in read_ed_jsonl(path):
        turns = [u.text for u in conv.turns if u.role == "speaker" and u.text.strip()]
        if not turns:
            continue
        out.append(ScriptConversation(conv.conv_id, polarity_of(conv.emotion), turns, source="ed", emotion=conv.emotion))
        if limit and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{path}: no conversation with a speaker turn")
    return out


# ======================================================================================== metrics
def tokens(text: str) -> List[str]:
    """Lower-cased word tokens (apostrophes kept inside words: ``don't``, ``dog's``)."""
    return _WORD.findall((text or "").lower().translate(_APOSTROPHES))


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    sa, sb = set(a), set(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


def opening(text: str, n: int = OPENING_TOKENS) -> Tuple[str, ...]:
    return tuple(tokens(text)[:n])


def _marker_pattern(markers: Sequence[str]) -> re.Pattern:
    parts = []
    for m in markers:
        star = m.endswith("*")
        body = r"\s+".join(re.escape(w) for w in m.rstrip("*").split())
        parts.append(body + (r"[a-z']*" if star else "") + r"(?![a-z0-9'])")
    return re.compile(r"(?<![a-z0-9'])(?:" + "|".join(parts) + ")")


_PATTERNS: Dict[Tuple[str, ...], re.Pattern] = {}


def markers_in(text: str, markers: Sequence[str]) -> List[str]:
    """The marker phrases found in ``text`` (as written in the text, lower-cased)."""
    key = tuple(markers)
    if key not in _PATTERNS:
        _PATTERNS[key] = _marker_pattern(markers)
    return [m.group(0) for m in _PATTERNS[key].finditer((text or "").lower().translate(_APOSTROPHES))]


def judge_reply(text: str) -> Dict[str, Any]:
    """``{"sympathetic": bool, "celebratory": bool, "markers": [...]}`` by the marker lists."""
    symp = markers_in(text, SYMPATHY_MARKERS)
    celeb = markers_in(text, CELEBRATION_MARKERS)
    return {"sympathetic": bool(symp), "celebratory": bool(celeb), "markers": symp + celeb}


def expected_polarity(conversation_polarity: str, perceived: Optional[str], judge_by_perception: bool) -> Optional[str]:
    """The polarity a reply to this turn should match, or None when it cannot be told."""
    if not judge_by_perception and conversation_polarity in ("positive", "negative"):
        return conversation_polarity
    return perceived if perceived in ("positive", "negative") else None


def polarity_mismatch(expected: Optional[str], sympathetic: bool, celebratory: bool) -> Optional[bool]:
    if expected is None:
        return None
    if expected == "positive":
        return sympathetic and not celebratory
    return celebratory and not sympathetic


def normalise_word(word: str) -> str:
    """Light normalisation: possessive dropped; words over 4 characters lose one suffix —
    "ing", "ed", "es" (after s, x, z, ch, sh: classes, boxes, wishes) or "s" (not after "ss")."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4:
        for suffix in GROUNDING_SUFFIXES:
            if not word.endswith(suffix):
                continue
            if suffix == "es" and not word[:-2].endswith(_ES_STEMS):
                continue  # notes → note (the "s" rule), classes → class
            if suffix == "s" and word.endswith("ss"):
                break  # stress, class
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> List[str]:
    """Normalised content words of ``text`` in order (stopwords and 1-character tokens removed)."""
    out = []
    for tok in tokens(text):
        if tok in STOPWORDS or len(tok) < 2:
            continue
        word = normalise_word(tok)
        if word and word not in STOPWORDS and len(word) > 1:
            out.append(word)
    return out


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile (0–100) by linear interpolation between closest ranks; None if empty."""
    vals = sorted(float(v) for v in values if v is not None)
    if not vals:
        return None
    pos = (len(vals) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def routing_kind(reply: str, generator: Optional[str]) -> str:
    """``generated`` | ``template`` | ``crisis`` | ``empty`` for an engine reply."""
    if not (reply or "").strip():
        return "empty"
    g = (generator or "").lower()
    if g.startswith(CRISIS_GENERATOR_PREFIX):
        return "crisis"
    if g in TEMPLATE_GENERATORS or g.startswith("template"):
        return "template"
    return "generated"


def score_conversation(transcript: Dict[str, Any], epitome: Optional[Sequence[Optional[Mapping[str, bool]]]] = None) -> Dict[str, Any]:
    """Add ``metrics`` and ``flags`` to every turn of ``transcript`` and its ``metrics``; returns it.

    ``transcript``: ``{"id", "polarity", "source", "turns": [{"user", "reply", "kind",
    "latency_ms", "perceived_polarity"?, …}]}``. ``epitome``: per turn ``{"ER": bool, …}`` from the
    response classifiers (or None).
    """
    polarity = transcript.get("polarity", "mixed")
    by_perception = transcript.get("source", "script") != "script" or polarity not in ("positive", "negative")
    earlier_tokens: List[set] = []
    earlier_openings: List[Tuple[str, ...]] = []
    user_words: set = set()
    said: List[str] = []
    probes = transcript.get("persona")
    for i, turn in enumerate(transcript["turns"]):
        reply = turn.get("reply") or ""
        toks = tokens(reply)
        reply_words = set(content_words(reply))
        turn_words = set(content_words(turn.get("user") or ""))
        user_words.update(turn_words)
        # repeat: best Jaccard with any earlier reply
        best, best_j = None, 0.0
        for j, prev in enumerate(earlier_tokens):
            jac = jaccard(toks, prev)
            if jac > best_j:
                best, best_j = j, jac
        repeat = bool(toks) and best_j >= REPEAT_JACCARD
        op = tuple(toks[:OPENING_TOKENS])
        opening_of = next((j for j, prev in enumerate(earlier_openings) if op and prev == op), None)
        judged = judge_reply(reply)
        expected = expected_polarity(polarity, turn.get("perceived_polarity"), by_perception)
        mismatch = polarity_mismatch(expected, judged["sympathetic"], judged["celebratory"])
        shared = sorted(reply_words & user_words)
        said.append(turn.get("user") or "")
        replaced = replaces(reply, said) if expected != "positive" else None
        m: Dict[str, Any] = {
            "words": len(toks),
            "max_jaccard": round(best_j, 4),
            "repeat": repeat,
            "repeat_of": best + 1 if repeat and best is not None else None,
            "opening_repeat": opening_of is not None,
            "opening_of": opening_of + 1 if opening_of is not None else None,
            "sympathetic": judged["sympathetic"],
            "celebratory": judged["celebratory"],
            "markers": judged["markers"],
            "expected_polarity": expected,
            "polarity_mismatch": mismatch,
            "grounded": bool(shared),
            "shared_words": shared,
            "replaces": replaced,
            "epitome": dict(epitome[i]) if epitome is not None and epitome[i] is not None else None,
        }
        if probes:
            m.update(persona_probe(turn, i + 1, probes, reply_words, turn_words))
        turn["metrics"] = m
        turn["flags"] = turn_flags(turn)
        earlier_tokens.append(set(toks))
        earlier_openings.append(op)
    transcript["metrics"] = aggregate([transcript])
    return transcript


def persona_probe(turn: Mapping[str, Any], index: int, probes: Mapping[str, Any],
                  reply_words: Iterable[str], user_words: Iterable[str]) -> Dict[str, Any]:
    """The persona metrics of one turn (1-based ``index``) of a script with persona probes, given the
    content words of its reply and of the user's message: ``persona_probe`` (relevant | irrelevant |
    None), ``persona_used`` (recall words in the reply that the user's message does not hold) and
    ``persona_reached`` (the generator's persona input held a recall word; None when the reply does
    not report it)."""
    kind = "relevant" if index in probes.get("relevant", ()) else "irrelevant" if index in probes.get("irrelevant", ()) else None
    if kind is None:
        return {"persona_probe": None}
    recall = set(probes.get("recall") or ())
    used = sorted((set(reply_words) - set(user_words)) & recall)
    generation = (turn.get("custom") or {}).get("generation") or {}
    sentences = generation.get("persona_sentences") if isinstance(generation, Mapping) else None
    reached = bool(set(content_words(" ".join(map(str, sentences)))) & recall) if isinstance(sentences, list) else None
    return {"persona_probe": kind, "persona_used": used, "persona_reached": reached}


def turn_flags(turn: Mapping[str, Any]) -> List[str]:
    """Short human-readable flags of a scored turn (the report shows them next to the reply)."""
    m = turn.get("metrics") or {}
    flags: List[str] = []
    kind = turn.get("kind")
    if kind in ("template", "crisis"):
        flags.append(kind)
    if kind == "empty" or not (turn.get("reply") or "").strip():
        flags.append("empty")
    if turn.get("error"):
        flags.append("error")
    if m.get("repeat"):
        flags.append(f"repeat of B{m['repeat_of']} (J={m['max_jaccard']:.2f})")
    if m.get("opening_repeat"):
        flags.append(f"same opening as B{m['opening_of']}")
    if m.get("polarity_mismatch"):
        tone = "sympathetic" if m.get("sympathetic") else "celebratory"
        flags.append(f"polarity mismatch ({tone} reply to a {m.get('expected_polarity')} turn)")
    if m.get("replaces"):
        flags.append(f"offers a new {m['replaces']}")
    if "empty" not in flags and not m.get("grounded", True):
        flags.append("ungrounded")
    if m.get("persona_probe"):
        used = m.get("persona_used")
        verdict = f"uses {', '.join(used)}" if used else "does not use it"
        reached = {True: "", False: "; the generator was not given it", None: ""}[m.get("persona_reached")]
        flags.append(f"persona probe ({m['persona_probe']}): {verdict}{reached}")
    return flags


def _rate(flags: Sequence[bool], n: int) -> Optional[float]:
    return round(100.0 * sum(1 for f in flags if f) / n, 2) if n else None


def aggregate(transcripts: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """The metrics of :data:`DEFINITIONS` over the scored turns of ``transcripts`` (pooled)."""
    turns = [t for tr in transcripts for t in tr["turns"]]
    n = len(turns)
    ms = [t.get("metrics") or {} for t in turns]
    judged = [m["polarity_mismatch"] for m in ms if m.get("polarity_mismatch") is not None]
    out: Dict[str, Any] = {
        "conversations": len(transcripts),
        "turns": n,
        "repeat_rate": _rate([m.get("repeat") for m in ms], n),
        "opening_repeat_rate": _rate([m.get("opening_repeat") for m in ms], n),
        "polarity_mismatch_rate": _rate(judged, len(judged)),
        "polarity_judged": len(judged),
        "grounded_rate": _rate([m.get("grounded") for m in ms], n),
        "replacement_rate": _rate([m.get("replaces") for m in ms], n),
    }
    for code in CM_CODES:
        flags = [m.get("epitome") for m in ms]
        if n and all(f is not None and code in f for f in flags):
            out[f"{code.lower()}_rate"] = _rate([f[code] for f in flags], n)
        else:
            out[f"{code.lower()}_rate"] = None
    words = [m.get("words", 0) for m in ms]
    out["mean_reply_words"] = round(sum(words) / n, 2) if n else None
    lat = [t.get("latency_ms") for t in turns if t.get("latency_ms") is not None]
    for key, q in (("p50_ms", 50), ("p95_ms", 95), ("max_ms", 100)):
        v = percentile(lat, q)
        out[key] = round(v, 1) if v is not None else None
    kinds = [t.get("kind") for t in turns]
    out["generated_share"] = _rate([k == "generated" for k in kinds], n)
    out["template_turns"] = kinds.count("template")
    out["crisis_turns"] = kinds.count("crisis")
    out["empty_replies"] = kinds.count("empty")
    out["errors"] = sum(1 for t in turns if t.get("error"))
    relevant = [m for m in ms if m.get("persona_probe") == "relevant"]
    irrelevant = [m for m in ms if m.get("persona_probe") == "irrelevant"]
    if relevant or irrelevant:  # persona-memory scripts only
        out["persona_relevant_probes"] = len(relevant)
        out["persona_recall_rate"] = _rate([bool(m["persona_used"]) for m in relevant], len(relevant))
        out["persona_irrelevant_probes"] = len(irrelevant)
        out["persona_intrusion_rate"] = _rate([bool(m["persona_used"]) for m in irrelevant], len(irrelevant))
        reached = [m["persona_reached"] for m in relevant + irrelevant if m.get("persona_reached") is not None]
        out["persona_reached_rate"] = _rate(reached, len(reached)) if reached else None
    return out


def stage_timing(transcripts: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """p50 / p95 / mean ms per stage of the engine's ``custom.timing`` over the generated turns
    (``perceive`` — the engine's /perceive call in engine mode — then perception as /nlg saw it, sql,
    the generator and its own stages, the conversation reranker); ``{}`` when the replies carry no
    timing (REST without the engine's ``custom`` forwarded)."""
    per_stage: Dict[str, List[float]] = {}
    for tr in transcripts:
        for turn in tr["turns"]:
            timing = (turn.get("custom") or {}).get("timing")
            if turn.get("kind") != "generated" or not isinstance(timing, Mapping):
                continue
            if turn.get("perceive_ms") is not None:
                per_stage.setdefault("perceive", []).append(float(turn["perceive_ms"]))
            for stage, ms in timing.items():
                per_stage.setdefault(stage, []).append(float(ms))
    return {stage: {"p50": round(percentile(v, 50), 1), "p95": round(percentile(v, 95), 1),
                    "mean": round(sum(v) / len(v), 1), "n": len(v)} for stage, v in per_stage.items()}


# ======================================================================================== replay
class EngineLike(Protocol):
    def perceive(self, text: str, history: Sequence[Mapping[str, str]] = (), sender_id: Optional[str] = None,
                 message_id: Optional[str] = None, turn_index: Optional[int] = None) -> Tuple[Any, float]: ...

    def nlg(self, request: Mapping[str, Any]) -> Dict[str, Any]: ...


class CMScorerLike(Protocol):
    def predict(self, seeker_posts: Sequence[str], responses: Sequence[str]) -> Mapping[str, Any]: ...


def new_sender_id(conv: ScriptConversation) -> str:
    """A sender id unique to this replay of the conversation."""
    safe = re.sub(r"[^A-Za-z0-9_.:-]+", "-", conv.id)[:60]
    return f"converse-{safe}-{uuid.uuid4().hex[:8]}"


def _new_transcript(conv: ScriptConversation, sender_id: str) -> Dict[str, Any]:
    tr: Dict[str, Any] = {"id": conv.id, "polarity": conv.polarity, "source": conv.source, "sender_id": sender_id}
    if conv.emotion:
        tr["emotion"] = conv.emotion
    if conv.persona is not None:
        tr["persona"] = conv.persona.to_dict()
    tr["turns"] = []
    return tr


class EngineReplayer:
    """Replays a conversation through an engine object the way Rasa + ``agent/`` call it."""

    mode = "engine"

    def __init__(self, engine: EngineLike, *, response: str = DEFAULT_RESPONSE, history_turns: Optional[int] = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.engine = engine
        self.response = response
        self.history_turns = int(history_turns if history_turns is not None else getattr(engine, "history_turns", 8))
        self.clock = clock

    def replay(self, conv: ScriptConversation) -> Dict[str, Any]:
        sender_id = new_sender_id(conv)
        tr = _new_transcript(conv, sender_id)
        events: List[Dict[str, Any]] = []
        history: List[Dict[str, str]] = []
        for i, text in enumerate(conv.turns):
            if conv.restarts_before(i + 1):
                # a new Rasa session for the same sender: the tracker Rasa sends starts again
                events = [{"event": "action", "name": "action_session_start"}, {"event": "session_started"}]
                history = []
            message_id = uuid.uuid4().hex
            t0 = self.clock()
            perception, perceive_ms = self.engine.perceive(
                text, history=list(history[-self.history_turns:]) if self.history_turns > 0 else [],
                sender_id=sender_id, message_id=message_id, turn_index=i)
            t1 = self.clock()
            empathy = perception.to_dict() if hasattr(perception, "to_dict") else dict(perception)
            # what the agent components put into parse_data: /perceive's JSON + available
            empathy = {**empathy, "latency_ms": round(float(perceive_ms), 2), "available": True}
            events.append({"event": "user", "text": text, "message_id": message_id, "parse_data": {"empathy": empathy}})
            request = {
                "response": self.response,
                "id": None,
                "arguments": {},
                "tracker": {"sender_id": sender_id, "slots": {}, "events": list(events)},
                "channel": {"name": "collector"},
            }
            result = self.engine.nlg(request) or {}
            t2 = self.clock()
            reply = str(result.get("text") or "")
            custom = result.get("custom") or {}
            generator = custom.get("generator")
            events.append({"event": "bot", "text": reply})
            history += [{"role": "user", "text": text}, {"role": "bot", "text": reply}]
            tr["turns"].append({
                "index": i + 1,
                "user": text,
                "reply": reply,
                "generator": generator,
                "response": custom.get("response") or self.response,
                "kind": routing_kind(reply, generator),
                "latency_ms": round((t2 - t0) * 1000, 1),
                "perceive_ms": round((t1 - t0) * 1000, 1),
                "nlg_ms": round((t2 - t1) * 1000, 1),
                "message_id": message_id,
                "perceived_emotion": empathy.get("emotion"),
                "perceived_polarity": empathy.get("polarity"),
                "crisis": bool(empathy.get("crisis")),
                "custom": _jsonable(custom),
                **({"restart": True} if conv.restarts_before(i + 1) else {}),
            })
        return tr


def _ws(text: str) -> str:
    return " ".join((text or "").split())


class TemplateMatcher:
    """Tells domain texts (templates, crisis script) from generated replies by their text."""

    def __init__(self, responses: Mapping[str, Sequence[str]], crisis_response: str = CRISIS_RESPONSE) -> None:
        self.patterns: List[Tuple[str, re.Pattern]] = []
        for name, texts in responses.items():
            for text in texts:
                norm = _ws(text)
                if not norm:
                    continue
                pieces = _PLACEHOLDER.split(norm)
                self.patterns.append((name, re.compile(".+?".join(re.escape(p) for p in pieces), re.DOTALL)))
        self.crisis_texts = [_ws(t) for t in responses.get(crisis_response, []) if _ws(t)]
        # the engine's scripted safety steps (check-in, follow-ups) are crisis replies too
        self.crisis_texts += [_ws(t) for name, texts in responses.items() if name.startswith("utter_crisis_")
                              and name not in (crisis_response, "utter_crisis_resources") for t in texts if _ws(t)]
        self.crisis_response = crisis_response
        if not self.crisis_texts:
            log.warning("the domain has no %s text: crisis replies cannot be told apart", crisis_response)

    @classmethod
    def from_domain(cls, path: str | Path) -> "TemplateMatcher":
        from empathy_nlg.domain import DomainResponses

        domain = DomainResponses.load(path)
        safety = Path(path).parent / "safety_responses.yml"  # the engine's scripted safety texts, beside the domain
        if safety.is_file():
            domain.update(DomainResponses.load(safety))
        return cls({name: domain.texts(name) for name in domain.responses})

    def _match(self, text: str) -> Optional[str]:
        norm = _ws(text)
        return next((name for name, pat in self.patterns if pat.fullmatch(norm)), None)

    def classify(self, messages: Sequence[str]) -> Tuple[str, Optional[str]]:
        """``(kind, response name)`` of the texts returned for one user turn."""
        texts = [m for m in messages if _ws(m)]
        if not texts:
            return "empty", None
        joined = _ws(" ".join(texts))
        if any(c in joined for c in self.crisis_texts):
            return "crisis", self.crisis_response
        whole = self._match(joined)
        if whole:
            return "template", whole
        names = [self._match(t) for t in texts]
        if all(names):
            return "template", "+".join(dict.fromkeys(names))
        return "generated", None


def post_json(url: str, body: Mapping[str, Any], timeout: float) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw or b"null")


class RestReplayer:
    """Replays a conversation against a running Rasa REST channel."""

    mode = "rest"

    def __init__(self, url: str, matcher: TemplateMatcher, *, timeout: float = REST_TIMEOUT_S,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.url = url
        self.matcher = matcher
        self.timeout = timeout
        self.clock = clock

    def replay(self, conv: ScriptConversation) -> Dict[str, Any]:
        sender_id = new_sender_id(conv)
        tr = _new_transcript(conv, sender_id)
        for i, text in enumerate(conv.turns):
            if conv.restarts_before(i + 1):
                self.restart(sender_id)
            error = None
            t0 = self.clock()
            try:
                data = post_json(self.url, {"sender": sender_id, "message": text}, self.timeout)
            except urllib.error.HTTPError as exc:
                data, error = [], f"HTTP {exc.code}"
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, (TimeoutError,)) or "timed out" in str(reason):
                    data, error = [], f"timed out after {self.timeout:g} s"
                else:
                    raise ConverseError(f"cannot reach {self.url} ({reason}); is `make serve` running?") from None
            except (TimeoutError, ConnectionError, OSError) as exc:
                if isinstance(exc, (ConnectionRefusedError,)):
                    raise ConverseError(f"cannot reach {self.url} ({exc}); is `make serve` running?") from None
                data, error = [], f"{type(exc).__name__}: {exc}"
            except json.JSONDecodeError:
                data, error = [], "the answer is not JSON"
            latency = (self.clock() - t0) * 1000
            if not isinstance(data, list):
                data, error = [], error or f"expected a JSON list of messages, got {type(data).__name__}"
            messages = [m for m in data if isinstance(m, dict)]
            texts = [str(m["text"]) for m in messages if m.get("text")]
            reply = "\n\n".join(texts)
            custom = next((m["custom"] for m in messages if isinstance(m.get("custom"), dict)), None)
            kind, response = self.matcher.classify(texts)
            generator = custom.get("generator") if custom else None
            if custom and kind == "generated":  # the engine's own word, when it is forwarded
                kind = routing_kind(reply, generator)
            turn: Dict[str, Any] = {
                "index": i + 1,
                "user": text,
                "reply": reply,
                "generator": generator,
                "response": response or (custom or {}).get("response"),
                "kind": kind,
                "latency_ms": round(latency, 1),
                "messages": len(messages),
                "perceived_emotion": _top_label((custom or {}).get("emotion")),
                "perceived_polarity": (custom or {}).get("polarity"),
                "custom": _jsonable(custom) if custom else None,
            }
            if error:
                turn["error"] = error
            if conv.restarts_before(i + 1):
                turn["restart"] = True
            tr["turns"].append(turn)
        return tr

    def restart(self, sender_id: str) -> None:
        """A new Rasa session for ``sender_id``: Rasa runs ``action_session_start`` on ``/session_start``."""
        try:
            post_json(self.url, {"sender": sender_id, "message": "/session_start"}, self.timeout)
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            raise ConverseError(f"could not restart the conversation of {sender_id} at {self.url} ({exc})") from None


def _top_label(emotion: Any) -> Optional[str]:
    if isinstance(emotion, list) and emotion and isinstance(emotion[0], dict):
        return emotion[0].get("label")
    return emotion if isinstance(emotion, str) else None


# ======================================================================================== running
def epitome_flags(transcript: Mapping[str, Any], cm_scorer: Optional[CMScorerLike]) -> Optional[List[Dict[str, bool]]]:
    """EPITOME flags per turn (seeker post = the user turn); empty replies are "no" unscored."""
    if cm_scorer is None:
        return None
    turns = transcript["turns"]
    idx = [i for i, t in enumerate(turns) if (t.get("reply") or "").strip()]
    flags = [{c: False for c in CM_CODES} for _ in turns]
    if idx:
        pred = cm_scorer.predict([turns[i]["user"] for i in idx], [turns[i]["reply"] for i in idx])
        for j, i in enumerate(idx):
            flags[i] = {c: bool(pred[c][j]) for c in CM_CODES if c in pred}
    return flags


class _Counter:
    """A minimal progress display on stderr when tqdm is not installed."""

    def __init__(self, total: int, desc: str, disable: bool) -> None:
        self.total, self.desc, self.disable, self.n = total, desc, disable, 0

    def update(self, k: int = 1) -> None:
        self.n += k
        if not self.disable:
            print(f"\r{self.desc}: {self.n}/{self.total}", end="", file=sys.stderr, flush=True)

    def set_postfix_str(self, s: str) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if not self.disable and self.n:
            print(file=sys.stderr)


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return _Counter(total, desc, not enabled)
    return tqdm(total=total, desc=desc, unit="conv", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def benchmark(
    conversations: Sequence[ScriptConversation],
    replayer: Any,
    out_dir: str | Path,
    *,
    cm_scorer: Optional[CMScorerLike] = None,
    label: str = "run",
    meta: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    concurrency: int = 1,
) -> Dict[str, Any]:
    """Replay, score and write ``conversations.jsonl``, ``summary.json`` and ``report.md``; returns the summary.

    ``concurrency`` > 1 replays that many conversations at once (threads; each conversation's
    turns stay in order), the load of several people talking at the same time; the transcripts
    keep the script's order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    transcripts: List[Dict[str, Any]] = []
    path = out / CONVERSATIONS
    pool = None
    if concurrency > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="converse")
        replayed = pool.map(replayer.replay, conversations)
    else:
        replayed = (replayer.replay(conv) for conv in conversations)
    with path.open("w", encoding="utf-8") as fh, _progress(len(conversations), label, progress) as bar:
        for tr in replayed:
            score_conversation(tr, epitome_flags(tr, cm_scorer))
            transcripts.append(tr)
            fh.write(json.dumps(tr, ensure_ascii=False) + "\n")
            fh.flush()
            bar.update(1)
    if pool is not None:
        pool.shutdown()
    summary: Dict[str, Any] = {
        "label": label,
        "mode": getattr(replayer, "mode", "engine"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - start, 2),
        "concurrency": concurrency,
        **dict(meta or {}),
        "cm_scorer": type(cm_scorer).__name__ if cm_scorer is not None else None,
        "overall": aggregate(transcripts),
        "timing_ms": stage_timing(transcripts),
        "conversations": [
            {"id": t["id"], "polarity": t["polarity"], "source": t["source"], **({"emotion": t["emotion"]} if t.get("emotion") else {}),
             "metrics": t["metrics"]}
            for t in transcripts
        ],
        "definitions": dict(DEFINITIONS),
        "judge": {"sympathy_markers": list(SYMPATHY_MARKERS), "celebration_markers": list(CELEBRATION_MARKERS),
                  "repeat_jaccard": REPEAT_JACCARD, "opening_tokens": OPENING_TOKENS},
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / REPORT).write_text(render_report(summary, transcripts), encoding="utf-8")
    return summary


# ======================================================================================== report
def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def _inline(text: str) -> str:
    return (text or "").replace("\n", "<br>") or "*(empty)*"


def metrics_table(overall: Mapping[str, Any]) -> str:
    """A plain-text two-column table of the overall metrics (printed at the end of a run)."""
    keys = [k for k in METRIC_ORDER if k in overall]
    width = max(len(k) for k in keys)
    return "\n".join(f"  {k.ljust(width)}  {_fmt(overall[k])}" for k in keys)


def render_report(summary: Mapping[str, Any], transcripts: Sequence[Mapping[str, Any]]) -> str:
    overall = summary["overall"]
    lines = [f"# Conversation benchmark — {summary.get('label')}", ""]
    src = summary.get("source") or {}
    facts = [
        ("mode", summary.get("mode")),
        ("input", f"{src.get('kind', '')} `{src.get('path', '')}`" + (f" (limit {src['limit']})" if src.get("limit") else "")),
        ("conversations / turns", f"{overall['conversations']} / {overall['turns']}"),
    ]
    eng = summary.get("engine") or {}
    if eng:
        facts.append(("generator", f"{eng.get('generator')} {eng.get('generator_version') or ''}".strip()))
        facts.append(("engine config", f"`{eng.get('config') or 'packaged defaults'}`"))
        if eng.get("set"):
            facts.append(("overrides", ", ".join(f"`{k}={json.dumps(v)}`" for k, v in eng["set"].items())))
    rest = summary.get("rest") or {}
    if rest:
        facts.append(("REST endpoint", f"`{rest.get('url')}` (domain `{rest.get('domain')}`)"))
    facts.append(("EPITOME classifiers", summary.get("cm_scorer") or "not used"))
    facts.append(("run", f"{summary.get('created')}, {summary.get('seconds')} s"))
    lines += [f"- **{k}:** {v}" for k, v in facts] + ["", "## Overall", "", "| metric | value | definition |", "|---|---:|---|"]
    for key in METRIC_ORDER:
        if key in overall:
            lines.append(f"| `{key}` | {_fmt(overall[key])} | {_cell(DEFINITIONS[key])} |")

    timing = summary.get("timing_ms") or {}
    if timing:
        lines += ["", "## Where the time goes (generated turns, engine's `custom.timing`)", "",
                  "| stage | p50 ms | p95 ms | mean ms | turns |", "|---|---:|---:|---:|---:|"]
        lines += [f"| `{stage}` | {row['p50']} | {row['p95']} | {row['mean']} | {row['n']} |" for stage, row in timing.items()]

    cols = [("turns", "turns"), ("repeat %", "repeat_rate"), ("opening %", "opening_repeat_rate"),
            ("mismatch %", "polarity_mismatch_rate"), ("judged", "polarity_judged"), ("grounded %", "grounded_rate"),
            ("ER %", "er_rate"), ("IP %", "ip_rate"), ("EX %", "ex_rate"), ("words", "mean_reply_words"),
            ("p95 ms", "p95_ms"), ("generated %", "generated_share"), ("template", "template_turns"),
            ("crisis", "crisis_turns"), ("empty", "empty_replies")]
    lines += ["", "## Per conversation", "", "| id | polarity | " + " | ".join(h for h, _ in cols) + " |",
              "|---|---|" + "---:|" * len(cols)]
    for tr in transcripts:
        pol = tr["polarity"] + (f" ({tr['emotion']})" if tr.get("emotion") else "")
        lines.append(f"| {_cell(tr['id'])} | {_cell(pol)} | " + " | ".join(_fmt(tr["metrics"].get(k)) for _, k in cols) + " |")

    lines += ["", "## Template turns", "",
              "User turns answered by a domain template or the crisis script rather than the generator.", ""]
    rows = [(tr, t) for tr in transcripts for t in tr["turns"] if t.get("kind") in ("template", "crisis", "empty")]
    if rows:
        lines += ["| conversation | turn | kind | answered by | user | reply |", "|---|---:|---|---|---|---|"]
        for tr, t in rows:
            by = t.get("generator") or t.get("response") or "–"
            if t.get("generator") and t.get("response"):
                by = f"{t['generator']} ({t['response']})"
            if t.get("error"):
                by = f"error: {t['error']}"
            lines.append(f"| {_cell(tr['id'])} | {t['index']} | {t['kind']} | {_cell(by)} | {_cell(t['user'])} | {_cell(t['reply'] or '(empty)')} |")
    else:
        lines.append("None: the generator answered every turn.")

    probe_rows = [(tr, t) for tr in transcripts for t in tr["turns"] if (t.get("metrics") or {}).get("persona_probe")]
    if probe_rows:
        lines += ["", "## Persona probes", "",
                  "Turns of persona-memory scripts where the remembered fact is relevant (it should come back) or "
                  "not (it should not); *reached*: the generator's persona input held the fact.", "",
                  "| conversation | turn | probe | recall words | reached | used | user | reply |",
                  "|---|---:|---|---|---|---|---|---|"]
        for tr, t in probe_rows:
            m = t["metrics"]
            lines.append(f"| {_cell(tr['id'])} | {t['index']} | {m['persona_probe']} | {_cell(', '.join(tr['persona']['recall']))} | "
                         f"{_fmt(m.get('persona_reached'))} | {_cell(', '.join(m['persona_used']) or 'no')} | "
                         f"{_cell(t['user'])} | {_cell(t['reply'] or '(empty)')} |")

    lines += ["", "## Transcripts", ""]
    for tr in transcripts:
        head = f"### {tr['id']} — {tr['polarity']}" + (f" ({tr['emotion']})" if tr.get("emotion") else "")
        lines += [head, ""]
        for t in tr["turns"]:
            if t.get("restart"):
                lines.append("- *(the conversation restarts: a new session for the same sender)*")
            lines.append(f"- **U{t['index']}:** {_inline(t['user'])}")
            info = [t.get("generator") or t.get("kind") or "?"]
            if t.get("latency_ms") is not None:
                info.append(f"{t['latency_ms']:.0f} ms")
            pp = t.get("perceived_polarity")
            if pp:
                info.append(f"perceived {t.get('perceived_emotion') or ''} {pp}".replace("  ", " "))
            flags = t.get("flags") or []
            tail = f" — *{' · '.join(info)}*" + (f" **[{'; '.join(flags)}]**" if flags else "")
            lines.append(f"- **B{t['index']}:** {_inline(t['reply'])}{tail}")
        lines.append("")

    lines += ["## Metric definitions", "",
              "Rates are % of all replies (the polarity mismatch rate: % of judged turns). Word tokens: lower-cased "
              "`[a-z0-9]+('[a-z]+)*`. Per-conversation metrics use the same definitions on that conversation's turns; "
              "overall metrics pool the turns of all conversations.", ""]
    lines += [f"- `{k}`: {v}" for k, v in DEFINITIONS.items()]
    lines += ["", f"Sympathy markers: {', '.join(SYMPATHY_MARKERS)}.", "",
              f"Celebration markers: {', '.join(CELEBRATION_MARKERS)}.", "",
              "Markers match whole words; `*` = any ending. The judge is lexical and transparent, not a classifier: "
              "negations (\"not great\") and quotations are not understood.", ""]
    return "\n".join(lines)


# ======================================================================================== CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--script", metavar="FILE", help="JSONL: {id?, polarity: positive|negative|mixed, turns: [user msgs]} per line")
    src.add_argument("--ed", metavar="FILE", help="ED ed-jsonl file: replay the speaker turns of each conversation")
    parser.add_argument("--limit", type=int, default=None, help="replay the first N conversations only")
    parser.add_argument("--out", required=True, help="output folder (conversations.jsonl, summary.json, report.md)")
    parser.add_argument("--label", default=None, help="name of this run in the report title and summary "
                        "(default: the generator in engine mode, 'rest' in REST mode)")
    eng = parser.add_argument_group("engine mode (default)")
    eng.add_argument("--config", default=None, help="engine YAML config (default: ./engine.yml when present, else packaged defaults)")
    eng.add_argument("--generator", default=None, metavar="NAME", help="override generation.generator")
    eng.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_",
                     help="set a dotted engine setting before load, VALUE parsed as YAML "
                     "(e.g. generation.generators.nec.rerank=false); repeatable")
    eng.add_argument("--response", default=DEFAULT_RESPONSE, help=f"response Rasa asks for on each turn (default {DEFAULT_RESPONSE})")
    rest = parser.add_argument_group("REST mode")
    rest.add_argument("--rest", metavar="URL", default=None, help="Rasa REST webhook, e.g. http://localhost:5005/webhooks/rest/webhook")
    rest.add_argument("--domain", default="domain.yml", help="Rasa domain whose texts count as templates (default domain.yml)")
    rest.add_argument("--timeout", type=float, default=REST_TIMEOUT_S, help=f"seconds per REST request (default {REST_TIMEOUT_S:g})")
    rest.add_argument("--concurrency", type=int, default=1, metavar="N",
                      help="replay N conversations at once (people talking at the same time; default 1)")
    parser.add_argument("--no-cm-scorer", action="store_true", help="do not load the EPITOME classifiers (er/ip/ex_rate become null)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def parse_sets(items: Sequence[str]) -> Dict[str, Any]:
    """``["a.b=1", "a.c=false"]`` → ``{"a.b": 1, "a.c": False}`` (values parsed as YAML)."""
    import yaml

    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"--set expects KEY=VALUE with a dotted KEY, got {item!r}")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {key}: value {raw!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
    return out


def nested_overrides(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}``; a key that is both a value and a section is an error."""
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {key}: {part!r} was already set to a value")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ValueError(f"--set {key}: conflicts with another --set below it")
        node[parts[-1]] = copy.deepcopy(value)
    return out


def engine_settings(out_dir: Path, config: Optional[str], generator: Optional[str], sets: Mapping[str, Any]) -> Tuple[Any, Optional[Path]]:
    """The engine settings for a run (:class:`~empathy_nlg.settings.EngineSettings`): config ←
    --generator ← --set ← a fresh SQLite file in ``out_dir``."""
    from empathy_nlg.settings import EngineSettings

    db = (out_dir / STATE_DB).resolve()
    for stale in (db, db.with_name(db.name + "-journal"), db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    overrides: Dict[str, Any] = {}
    if generator:
        overrides["generation.generator"] = generator
    overrides.update(sets)
    overrides["state.database_url"] = f"sqlite:///{db}"
    return EngineSettings.find(config, nested_overrides(overrides))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def load_cm_scorer() -> Optional[CMScorerLike]:
    from empathy_nlg.evaluation.harness import load_cm_scorer as _load

    return _load({})


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    script, ed = getattr(args, "script", None), getattr(args, "ed", None)
    if bool(script) == bool(ed):
        raise ValueError("give exactly one of --script FILE or --ed FILE")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be a positive number, got {args.limit}")
    sets = parse_sets(getattr(args, "set_", []))
    if args.rest and (args.config or args.generator or sets):
        raise ValueError("--config, --generator and --set apply to engine mode only, not with --rest")
    concurrency = int(getattr(args, "concurrency", 1) or 1)
    if concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {concurrency}")
    if concurrency > 1 and not args.rest:
        raise ValueError("--concurrency applies to REST mode (--rest URL): the load goes through the running stack")
    conversations = read_script(script, args.limit) if script else read_ed_replay(ed, args.limit)
    source = {"kind": "script" if script else "ed", "path": str(script or ed), "limit": args.limit,
              "conversations": len(conversations), "turns": sum(len(c.turns) for c in conversations)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta: Dict[str, Any] = {"source": source}

    if args.rest:
        domain = Path(args.domain)
        if not domain.exists():
            raise FileNotFoundError(f"Rasa domain {domain} not found (--domain)")
        replayer: Any = RestReplayer(args.rest, TemplateMatcher.from_domain(domain), timeout=args.timeout)
        label = args.label or "rest"
        meta["rest"] = {"url": args.rest, "domain": str(domain), "timeout_s": args.timeout}
    else:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from empathy_nlg.engine import EmpathyEngine

        settings, config_path = engine_settings(out, args.config, args.generator, sets)
        print(f"loading the engine (config: {config_path or 'packaged defaults'}; generator: "
              f"{settings.generation.generator})…", file=sys.stderr, flush=True)
        t_load = time.perf_counter()
        engine = EmpathyEngine.load(settings.as_dict())
        described = engine.describe()
        label = args.label or described.get("generator") or settings.generation.generator
        meta["engine"] = {
            "config": str(config_path) if config_path else None,
            "generator": described.get("generator"),
            "generator_version": described.get("generator_version"),
            "perception": described.get("perception"),
            "set": sets,
            "database_url": settings.state.database_url,
            "load_seconds": round(time.perf_counter() - t_load, 1),
        }
        replayer = EngineReplayer(engine, response=args.response)

    cm_scorer = None if args.no_cm_scorer else load_cm_scorer()
    try:
        summary = benchmark(conversations, replayer, out, cm_scorer=cm_scorer, label=label, meta=meta,
                            progress=not args.no_progress, concurrency=concurrency)
    except ConverseError as exc:
        print(f"empathy-nlg converse-eval: error: {exc}", file=sys.stderr)
        if (out / CONVERSATIONS).is_file():
            print(f"conversations replayed so far: {out / CONVERSATIONS}", file=sys.stderr)
        return 1
    o = summary["overall"]
    at_once = f", {concurrency} at once" if concurrency > 1 else ""
    print(f"\nconversation benchmark '{label}' ({summary['mode']} mode): {_plural(o['conversations'], 'conversation')}, "
          f"{_plural(o['turns'], 'turn')} from {source['path']}{at_once}")
    print(metrics_table(o))
    if summary.get("timing_ms"):
        print("  where the time goes, generated turns (ms p50 / p95): " + ", ".join(
            f"{stage} {row['p50']:.0f}/{row['p95']:.0f}" for stage, row in summary["timing_ms"].items()))
    print(f"transcripts: {out / CONVERSATIONS}\nsummary:     {out / SUMMARY}\nreport:      {out / REPORT}"
          f"  (total {time.perf_counter() - t0:.1f} s)")
    return 0
