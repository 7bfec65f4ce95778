"""Reply polarity: does a listener's reply suit a positive or a negative situation?

The conversation reranker needs to know whether a candidate reply *sounds* like an answer to good
news ("That's awesome, congratulations!") or to bad news ("Oh no, I'm so sorry."), so that good
news is never answered with sympathy and bad news never with celebration. The emotion head cannot
tell: it was trained on what speakers feel, not on how listeners answer.

Data: the first listener reply of every EmpatheticDialogues train conversation, labelled with
MIME's polarity group of the conversation's emotion (the speaker's gold feeling): a reply to a
``joyful`` conversation is a "positive-situation" reply. Later listener turns are left out: they
drift to follow-up questions that carry little polarity. Dev: the same on ED valid.

Model: the frozen shared MiniLM sentence embedding → one logistic unit (``reply_polarity_head``).
Output: P(the reply belongs to a positive situation). A neutral question ("What's his name?")
lands near the prior, so it neither helps nor hurts a candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from empathy_nlg.datasets import Conversation
from empathy_nlg.taxonomy import polarity_of

HEAD = "reply_polarity_head"
VERSION = "minilm-reply-polarity-v1"


def first_replies(conversations: Sequence[Conversation]) -> Tuple[List[str], np.ndarray]:
    """The first listener reply of each conversation and its situation polarity (1 = positive)."""
    texts, labels = [], []
    for conv in conversations:
        reply = next((u.text for u in conv.turns if u.role == "listener" and u.text.strip()), None)
        if reply is None:
            continue
        texts.append(reply)
        labels.append(1.0 if polarity_of(conv.emotion) == "positive" else 0.0)
    return texts, np.asarray(labels, dtype=np.float32)


def _metrics(probs: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    from sklearn.metrics import roc_auc_score

    pred = probs.reshape(-1) >= 0.5
    return {"accuracy": float(100 * np.mean(pred == (y > 0.5))), "auc": float(100 * roc_auc_score(y, probs.reshape(-1)))}


def train_reply_polarity(train: Sequence[Conversation], valid: Sequence[Conversation], cache, out_dir: Path,
                         seed: int = 13, progress: bool = True) -> Dict[str, float]:
    """Fit the head on ED train first replies, keep the best epoch on ED valid, write the artefact."""
    from empathy_nlg.perception.common import fit_head, predict_head, save_head

    x_texts, y = first_replies(train)
    d_texts, y_dev = first_replies(valid)
    X, X_dev = cache.encode(x_texts, progress=progress), cache.encode(d_texts, progress=progress)
    model, info = fit_head(X, y.reshape(-1, 1), loss="bce", out_dim=1, hidden=0, dropout=0.1, epochs=15, lr=3e-3,
                           X_dev=X_dev, Y_dev=y_dev, score_fn=lambda p, t: _metrics(p, t)["auc"], seed=seed,
                           desc="reply polarity", progress=progress)
    metrics = _metrics(predict_head(model, X_dev, "bce"), y_dev)
    save_head(model, {"in_dim": int(X.shape[1]), "out_dim": 1, "hidden": 0, "dropout": 0.1, "loss": "bce",
                      "version": VERSION, "train_examples": len(x_texts), "dev_examples": len(d_texts),
                      "best_epoch": info["best_epoch"], "dev": metrics}, out_dir, HEAD)
    return {**metrics, "train_examples": len(x_texts), "dev_examples": len(d_texts)}


class ReplyPolarity:
    """P(positive situation) for reply texts, from their shared-encoder embeddings."""

    def __init__(self, model, config: dict) -> None:
        self.model = model
        self.config = config
        self.version = str(config.get("version", VERSION))

    @classmethod
    def load(cls, art_dir: Path) -> "ReplyPolarity":
        from empathy_nlg.perception.common import load_head

        model, config = load_head(art_dir, HEAD)
        return cls(model, config)

    @classmethod
    def load_or_none(cls, art_dir: Path) -> Optional["ReplyPolarity"]:
        try:
            return cls.load(art_dir)
        except FileNotFoundError:
            return None

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        from empathy_nlg.perception.common import predict_head

        if len(embeddings) == 0:
            return np.zeros((0,), dtype=np.float32)
        return predict_head(self.model, np.asarray(embeddings, dtype=np.float32), "bce").reshape(-1)
