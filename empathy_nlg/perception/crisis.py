"""Crisis flag: self-harm / suicidal intent or imminent danger versus ordinary sadness.

Method (safety first: recall before precision)
---------------------------------------------
1. **A trained classifier** (``crisis_head``, :mod:`empathy_nlg.perception.crisis_train`) over the
   user's latest message *and the conversation so far*: features ``[mean, max]`` of the MiniLM
   embeddings of the message's chunks (long messages are read in 64-word chunks, not truncated)
   and the mean embedding of the user's previous (up to 3) messages, so "tonight's the night"
   after "I bought a rope" is read in its context. Trained on real labelled posts (C-SSRS Reddit
   annotations) plus the project's own phrasings and hard negatives; its threshold is chosen on a
   dev split for recall. Reason: ``classifier:<p>``.
2. **Curated lexical patterns** (:data:`PATTERNS`) as a floor the classifier cannot lower:
   explicit suicide/self-harm phrasings, wishes to be dead, plans and means, burden statements.
   Idioms that share the words ("this exam is killing me", "dying to see", "phone died") never
   match because every pattern requires a first-person self-directed form.
3. **Negation handling** for patterns: a match preceded in the same clause by a negator ("I would
   *never* hurt myself") is reported as ``negated:<name>`` with a sub-threshold score.

Only the **latest** user message is judged (its context only informs the classifier): a crisis
statement two turns ago does not flag "ok, I'll call the line" — what happens after a crisis turn
is the engine's crisis follow-up (:mod:`empathy_nlg.safety`), not a re-flag of the whole window.
``crisis_score`` is the max of the pattern score and the classifier's probability mapped so that
its threshold lands on 0.5; ``crisis`` is ``crisis_score ≥ 0.5``. Measured recall and false
positives per category: ``empathy-nlg eval-crisis`` and the perception model card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

EVAL_SET = Path(__file__).resolve().parent / "crisis_eval.yml"

_SELF = r"(?:my\s*self|myself)"
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
    "never_wake": r"\b(?:never|not|don'?t|wouldn'?t)\s+wake\s+up\b",
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
    "last_day": r"\bmy\s+last\s+day\b(?!\s+(?:at|of)\s+(?:work|school|the\s+job))",
    "if_i_died": r"\b(?:care|notice)\s+if\s+i\s+(?:died|was\s+gone|disappeared)\b",
    "plan_to_die": r"\bplan\s+to\s+(?:kill|die|end)\b",
}
_COMPILED = {name: re.compile(p, re.IGNORECASE) for name, p in PATTERNS.items()}
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
MAX_CHUNKS = 8
CONTEXT_TURNS = 3
HEAD = "crisis_head"
CONTEXT_ONLY = "context-only"


def chunks(text: str, size: int = CHUNK_WORDS, limit: int = MAX_CHUNKS) -> List[str]:
    """``text`` in consecutive pieces of at most ``size`` words (at most ``limit`` pieces)."""
    words = text.split()
    if not words:
        return ["."]
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)][:limit]


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

    def __init__(self, head=None, embed=None) -> None:
        self.model, self.config = head if head is not None else (None, {})
        self.threshold = float(self.config.get("threshold", 0.5))
        self.concern_threshold = float(self.config.get("concern_threshold", self.threshold))
        self.embed = embed
        self.version = f"patterns+{self.config.get('version', 'no-classifier')}" if self.model is not None else "patterns-only"

    @classmethod
    def load(cls, art_dir, embed=None) -> "CrisisDetector":
        """The committed head from ``art_dir`` (patterns only, with a warning, when it is missing)."""
        from empathy_nlg.perception.common import load_head

        try:
            return cls(load_head(art_dir, HEAD), embed)
        except FileNotFoundError:
            import logging

            logging.getLogger(__name__).warning("no %s in %s: the crisis flag uses patterns only "
                                                "(train it: empathy-nlg train-perception --task crisis)", HEAD, art_dir)
            return cls(None, embed)

    def probability(self, texts: Sequence[str], message_embedding: Optional[np.ndarray] = None) -> Optional[float]:
        """P(crisis) of the last of ``texts`` given the earlier ones (None without a classifier)."""
        if self.model is None or self.embed is None or not texts:
            return None
        from empathy_nlg.perception.common import predict_head

        message = texts[-1]
        pieces = chunks(message)
        if len(pieces) == 1 and message_embedding is not None:
            m = np.asarray(message_embedding, dtype=np.float32).reshape(1, -1)
        else:
            m = self.embed(pieces)
        previous = [t for t in texts[:-1] if t.strip()][-CONTEXT_TURNS:]
        ctx = self.embed(previous) if previous else None
        return float(predict_head(self.model, features(m, ctx)[None, :], "bce")[0, 0])

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
        p = self.probability(list(texts), emb)
        concern = False
        if p is not None:
            if p >= self.threshold:
                reasons.append(f"classifier:{p:.2f}")
                if len(texts) > 1 and not any(not r.startswith("negated:") for r in reasons[:-1]):
                    alone = self.probability([texts[-1]], emb)
                    if alone is not None and alone < self.threshold:
                        # flagged only because of what was said before: the engine's follow-up
                        # state answers these instead of repeating the resources
                        reasons.append(CONTEXT_ONLY)
            elif p >= self.concern_threshold:
                reasons.append(f"concern:{p:.2f}")
                concern = True
            score = max(score, self.scaled(p))
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
