"""Crisis flag: self-harm / suicidal intent versus ordinary sadness.

Method (safety first: recall before precision)
---------------------------------------------
1. **Curated lexical patterns** (:data:`PATTERNS`), each with a name that is returned as the
   reason: explicit suicide/self-harm phrasings, wishes to be dead or not to exist, plans and
   means, burden/"better off without me" statements. Idioms that share the words ("this exam is
   killing me", "dying to see", "phone died", "bored to death") never match because every
   pattern requires a first-person self-directed form.
2. **Negation handling**: a match preceded in the same clause by a negator ("I would *never* hurt
   myself", "I'm *not* suicidal") is reported as ``negated:<name>`` with a sub-threshold score,
   unless another, un-negated pattern also fires.
3. **Embedding similarity** against prototype crisis phrasings (:data:`PROTOTYPES`, our own
   wording) with the shared MiniLM sentence embeddings the Perceiver already computed: a user
   utterance whose nearest crisis prototype is close (cosine ≥ ``sim_threshold``) *and* closer
   than the nearest everyday-distress prototype (:data:`CONTRAST`) by ``margin`` is flagged with
   reason ``similar:<prototype id>``. This catches paraphrases the patterns miss.

``crisis_score`` is the max of the pattern score (1.0, or 0.4 when negated) and the similarity
score; ``crisis`` is ``crisis_score ≥ 0.5``. All speaker (user) turns of the dialogue are
checked, the most recent weighted as much as the rest (a disclosure two turns ago still counts).
The measured precision/recall on ``crisis_eval.yml`` is in the model card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

VERSION = "patterns+prototypes-v1"
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

PROTOTYPES: Tuple[str, ...] = (
    "I am thinking about ending my life",
    "I want to commit suicide",
    "I don't want to live any more",
    "I have been harming myself on purpose",
    "I plan to take an overdose",
    "I wish I could die in my sleep",
    "everyone would be happier if I was dead",
    "I have a plan to kill myself",
    "I am going to jump and end it",
    "I can't see any way out except dying",
)
CONTRAST: Tuple[str, ...] = (
    "I feel sad and down today",
    "I'm really stressed about my exams",
    "my pet died and I'm grieving",
    "I'm exhausted and tired of work",
    "I'm lonely since moving to a new city",
    "that joke made me die laughing",
    "I'm upset that I lost my job",
    "I hurt myself by accident while cooking",
)


@dataclass
class CrisisResult:
    crisis: bool
    score: float
    reasons: List[str] = field(default_factory=list)


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


class CrisisDetector:
    """Patterns + prototype similarity (see module doc)."""

    def __init__(self, prototype_vecs: Optional[np.ndarray] = None, contrast_vecs: Optional[np.ndarray] = None,
                 sim_threshold: float = 0.62, margin: float = 0.05) -> None:
        self.prototype_vecs = prototype_vecs
        self.contrast_vecs = contrast_vecs
        self.sim_threshold = sim_threshold
        self.margin = margin
        self.version = VERSION

    @classmethod
    def with_encoder(cls, encoder, **kwargs) -> "CrisisDetector":
        """Embed the prototypes once with the shared encoder (≈ 20 short sentences, well under a second)."""
        return cls(encoder.encode(list(PROTOTYPES)), encoder.encode(list(CONTRAST)), **kwargs)

    def similarity_score(self, emb: np.ndarray) -> Tuple[float, Optional[str]]:
        if self.prototype_vecs is None or emb is None:
            return 0.0, None
        sims = self.prototype_vecs @ emb
        best = int(np.argmax(sims))
        contrast = float(np.max(self.contrast_vecs @ emb)) if self.contrast_vecs is not None else -1.0
        s = float(sims[best])
        if s >= self.sim_threshold and s - contrast >= self.margin:
            # map [threshold, 1] to [0.5, 1]
            return 0.5 + 0.5 * (s - self.sim_threshold) / max(1e-6, 1 - self.sim_threshold), f"similar:p{best}"
        return min(0.49, max(0.0, s - contrast)), None

    def detect(self, texts: Sequence[str], embeddings: Optional[np.ndarray] = None) -> CrisisResult:
        """Check the user's utterances (``embeddings`` aligned with ``texts``, optional)."""
        score, reasons = 0.0, []
        for k, text in enumerate(texts):
            s, r = pattern_matches(text)
            score = max(score, s)
            reasons.extend(r)
            if embeddings is not None:
                s2, r2 = self.similarity_score(embeddings[k])
                score = max(score, s2)
                if r2:
                    reasons.append(r2)
        if any(not r.startswith("negated:") for r in reasons):
            score = max(score, 0.5)
        return CrisisResult(crisis=score >= 0.5, score=round(float(score), 4), reasons=sorted(set(reasons)))


def load_eval_set(path: Path = EVAL_SET) -> Tuple[List[str], List[int]]:
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "crisis" not in data or "non_crisis" not in data:
        raise ValueError(f"{path}: expected keys 'crisis' and 'non_crisis'")
    texts = list(data["crisis"]) + list(data["non_crisis"])
    return texts, [1] * len(data["crisis"]) + [0] * len(data["non_crisis"])


def evaluate(detector: CrisisDetector, encoder=None, path: Path = EVAL_SET) -> Dict[str, object]:
    """Precision/recall (percent) on the YAML set, plus the misses and false alarms."""
    texts, gold = load_eval_set(path)
    emb = encoder.encode(texts) if encoder is not None else None
    pred = [detector.detect([t], None if emb is None else emb[i : i + 1]).crisis for i, t in enumerate(texts)]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum((not p) and g for p, g in zip(pred, gold))
    return {
        "n_crisis": sum(gold), "n_non_crisis": len(gold) - sum(gold),
        "precision": 100.0 * tp / max(tp + fp, 1), "recall": 100.0 * tp / max(tp + fn, 1),
        "false_alarms": [t for t, p, g in zip(texts, pred, gold) if p and not g],
        "misses": [t for t, p, g in zip(texts, pred, gold) if g and not p],
    }
