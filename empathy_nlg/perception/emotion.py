"""Emotion perception: a distribution over the 32 ED emotions for a multi-turn dialogue.

Method
------
The dialogue is embedded utterance by utterance with the shared frozen MiniLM encoder (one pass;
the same embeddings feed the cause, CM and crisis models). A dialogue is summarised by four
384-d views, concatenated into a 1,536-d feature (:func:`dialogue_features`):

1. the mean of the speaker's (user's) utterance embeddings,
2. the last speaker utterance (what the reply answers),
3. the first speaker utterance (in ED it usually states the situation),
4. the mean of the listener's utterance embeddings (zeros when there are none).

A one-hidden-layer MLP head (softmax over :data:`~empathy_nlg.taxonomy.EMOTIONS`) is trained
on every speaker-ending prefix of the ED train conversations labelled with the conversation's
emotion, plus the ED situation prompts as one-utterance dialogues — the data recipe of
MoEL/MIME/Gao et al. (who label every context of a conversation with its emotion), adapted from
their fine-tuned transformer encoders to a frozen sentence encoder with a trained head.
Polarity follows MIME's grouping: ``polarity_prob`` is the summed probability of the group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from empathy_nlg.datasets import Conversation, Utterance, dialogue_until_last_speaker
from empathy_nlg.taxonomy import EMOTION_TO_ID, EMOTIONS, POLARITIES, POSITIVE_EMOTIONS

HEAD_NAME = "emotion_head"
VERSION = "minilm-mlp-v1"
N_VIEWS = 4
POSITIVE_MASK = np.array([e in POSITIVE_EMOTIONS for e in EMOTIONS], dtype=bool)


def dialogue_features(roles: Sequence[str], embeddings: np.ndarray) -> np.ndarray:
    """The 4×d feature of one dialogue from its per-utterance embeddings (see module doc)."""
    d = embeddings.shape[1]
    speaker = [i for i, r in enumerate(roles) if r == "speaker"]
    listener = [i for i, r in enumerate(roles) if r != "speaker"]
    if not speaker:  # a dialogue without a user turn: treat every turn as the user's
        speaker = list(range(len(roles)))
    feats = [
        embeddings[speaker].mean(0),
        embeddings[speaker[-1]],
        embeddings[speaker[0]],
        embeddings[listener].mean(0) if listener else np.zeros(d, dtype=np.float32),
    ]
    return np.concatenate(feats).astype(np.float32)


def speaker_prefixes(conv: Conversation) -> List[List[Utterance]]:
    """Every prefix of the conversation that ends with a speaker turn."""
    return [list(conv.turns[: i + 1]) for i, t in enumerate(conv.turns) if t.role == "speaker"]


def features_for_dialogues(dialogues: Sequence[Sequence[Utterance]], cache) -> np.ndarray:
    """Dialogue features for many dialogues with one (cached) encoding pass over unique texts."""
    texts = sorted({u.text for dlg in dialogues for u in dlg})
    emb = cache.encode(texts)
    index = {t: i for i, t in enumerate(texts)}
    rows = [
        dialogue_features([u.role for u in dlg], emb[[index[u.text] for u in dlg]]) for dlg in dialogues
    ]
    return np.stack(rows) if rows else np.zeros((0, N_VIEWS * emb.shape[1]), dtype=np.float32)


def training_set(conversations: Sequence[Conversation], situations: Sequence, cache) -> Tuple[np.ndarray, np.ndarray]:
    """(features, labels) from ED conversation prefixes plus situation prompts."""
    dialogues: List[List[Utterance]] = []
    labels: List[int] = []
    for conv in conversations:
        for prefix in speaker_prefixes(conv):
            dialogues.append(prefix)
            labels.append(EMOTION_TO_ID[conv.emotion])
    for item in situations:
        dialogues.append([Utterance(role="speaker", text=item.text)])
        labels.append(EMOTION_TO_ID[item.label])
    return features_for_dialogues(dialogues, cache), np.asarray(labels, dtype=np.int64)


def eval_set(conversations: Sequence[Conversation], cache) -> Tuple[np.ndarray, np.ndarray]:
    """One example per conversation: the dialogue up to its last speaker turn."""
    dialogues = [dialogue_until_last_speaker(c) for c in conversations]
    labels = np.asarray([EMOTION_TO_ID[c.emotion] for c in conversations], dtype=np.int64)
    return features_for_dialogues(dialogues, cache), labels


def emotion_metrics(probs: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """Accuracy, macro-F1, top-3 accuracy and MIME polarity accuracy, all in percent."""
    from sklearn.metrics import f1_score

    pred = probs.argmax(1)
    top3 = np.argsort(-probs, axis=1)[:, :3]
    pos_prob = probs[:, POSITIVE_MASK].sum(1)
    pred_pol = pos_prob >= 0.5
    gold_pol = POSITIVE_MASK[labels]
    return {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean() * 100),
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=list(range(len(EMOTIONS))), zero_division=0) * 100),
        "top3_accuracy": float((top3 == labels[:, None]).any(1).mean() * 100),
        "polarity_accuracy": float((pred_pol == gold_pol).mean() * 100),
    }


@dataclass
class EmotionResult:
    emotion: str
    probs: Dict[str, float]
    polarity: str
    polarity_prob: float


def result_from_probs(p: np.ndarray) -> EmotionResult:
    """Label, label distribution and MIME polarity (summed group probability) from one prob row."""
    emotion = EMOTIONS[int(np.argmax(p))]
    pos = float(p[POSITIVE_MASK].sum())
    polarity = POLARITIES[0] if pos >= 0.5 else POLARITIES[1]
    return EmotionResult(
        emotion=emotion,
        probs={e: float(v) for e, v in zip(EMOTIONS, p)},
        polarity=polarity,
        polarity_prob=pos if polarity == POLARITIES[0] else 1.0 - pos,
    )


class EmotionClassifier:
    """The trained head; :meth:`predict_proba` takes dialogue features (see :func:`dialogue_features`)."""

    def __init__(self, model, config: dict) -> None:
        self.model = model
        self.config = config
        self.version = str(config.get("version", VERSION))
        if list(config.get("labels", EMOTIONS)) != list(EMOTIONS):
            raise ValueError("emotion head was trained on a different label set than taxonomy.EMOTIONS")

    @classmethod
    def load(cls, art_dir: Path) -> "EmotionClassifier":
        from empathy_nlg.perception.common import load_head

        model, config = load_head(art_dir, HEAD_NAME)
        return cls(model, config)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        from empathy_nlg.perception.common import predict_head

        return predict_head(self.model, features, "ce")


def train_emotion(
    train_convs: Sequence[Conversation],
    train_situations: Sequence,
    dev_convs: Sequence[Conversation],
    cache,
    out_dir: Path,
    seed: int = 13,
    hidden: int = 512,
    dropout: float = 0.3,
    epochs: int = 25,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    label_smoothing: float = 0.1,
    batch_size: int = 256,
    progress: bool = True,
) -> Dict[str, float]:
    """Train, keep the best epoch on dev accuracy, save ``emotion_head.*``; returns dev metrics."""
    from empathy_nlg.perception.common import fit_head, predict_head, save_head

    X, y = training_set(train_convs, train_situations, cache)
    Xd, yd = eval_set(dev_convs, cache)
    model, info = fit_head(
        X, y, loss="ce", out_dim=len(EMOTIONS), hidden=hidden, dropout=dropout, epochs=epochs, lr=lr,
        weight_decay=weight_decay, seed=seed, X_dev=Xd, Y_dev=yd, label_smoothing=label_smoothing, batch_size=batch_size,
        score_fn=lambda p, t: (p.argmax(1) == t).mean(), desc="emotion head", progress=progress,
    )
    metrics = emotion_metrics(predict_head(model, Xd, "ce"), yd)
    config = {
        "version": VERSION, "labels": list(EMOTIONS), "in_dim": int(X.shape[1]), "out_dim": len(EMOTIONS),
        "hidden": hidden, "dropout": dropout, "features": "speaker-mean|last-speaker|first-speaker|listener-mean",
        "train_examples": int(len(X)), "epochs": epochs, "best_epoch": info["best_epoch"], "lr": lr,
        "weight_decay": weight_decay, "label_smoothing": label_smoothing, "seed": seed, "dev_metrics": metrics,
    }
    save_head(model, config, out_dir, HEAD_NAME)
    return metrics
