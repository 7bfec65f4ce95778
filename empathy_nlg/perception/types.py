"""What perception returns: the contract between perception models, the API and generators."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List

from empathy_nlg.taxonomy import CM_CODES, EMOTIONS, polarity_of


@dataclass
class CauseUtterance:
    """An utterance of the context that holds the cause of the emotion.

    ``index`` points into the dialogue passed to perception; ``spans`` are the cause words
    (token-level tagging, Gao et al.) as ``[start, end)`` character offsets into ``text``.
    """

    index: int
    text: str
    score: float
    spans: List[List[int]] = field(default_factory=list)


@dataclass
class Perception:
    emotion: str
    emotion_probs: Dict[str, float]
    polarity: str
    polarity_prob: float
    causes: List[CauseUtterance]
    cm: Dict[str, float]  # P(mechanism present) per CM code: ER, IP, EX
    crisis: bool
    crisis_score: float
    crisis_reasons: List[str] = field(default_factory=list)
    models: Dict[str, str] = field(default_factory=dict)  # component -> model name/version
    crisis_concern: bool = False  # not flagged, but close enough that the engine asks a safety check-in

    def top_k(self, k: int = 3) -> List[Dict[str, Any]]:
        ranked = sorted(self.emotion_probs.items(), key=lambda kv: kv[1], reverse=True)[:k]
        return [{"label": label, "prob": round(float(p), 4)} for label, p in ranked]

    @property
    def cm_plan(self) -> List[str]:
        """The mechanisms to use in the reply: those with P ≥ 0.5, at least the most likely one."""
        chosen = [c for c in CM_CODES if self.cm.get(c, 0.0) >= 0.5]
        if not chosen and self.cm:
            chosen = [max(self.cm, key=self.cm.get)]
        return chosen

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["emotion_top_k"] = self.top_k(3)
        d["cm_plan"] = self.cm_plan
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Perception":
        """Rebuild from :meth:`to_dict` output (e.g. a Rasa ``parse_data['empathy']``)."""
        probs = {e: float(d.get("emotion_probs", {}).get(e, 0.0)) for e in EMOTIONS}
        emotion = d.get("emotion") or max(probs, key=probs.get)
        return cls(
            emotion=emotion,
            emotion_probs=probs,
            polarity=d.get("polarity") or polarity_of(emotion),
            polarity_prob=float(d.get("polarity_prob", 0.0)),
            causes=[CauseUtterance(**c) for c in d.get("causes", [])],
            cm={c: float(d.get("cm", {}).get(c, 0.0)) for c in CM_CODES},
            crisis=bool(d.get("crisis", False)),
            crisis_score=float(d.get("crisis_score", 0.0)),
            crisis_reasons=list(d.get("crisis_reasons", [])),
            crisis_concern=bool(d.get("crisis_concern", False)),
            models=dict(d.get("models", {})),
        )
