"""Communication mechanisms (EPITOME; Sharma et al. 2020) as IMAGINE uses them.

Response classifiers
--------------------
EPITOME rates a response to a seeker post for three mechanisms — emotional reaction (ER),
interpretation (IP), exploration (EX) — at level none/weak/strong. As IMAGINE does, weak and strong
are merged into "yes". Sharma et al. fine-tune two RoBERTa encoders (seeker, response) with
attention between them; we adapt this to the shared frozen MiniLM: the pair feature is
``[e_seeker, e_response, e_seeker ⊙ e_response, |e_seeker − e_response|]`` and one small MLP
per mechanism predicts P(yes). The dev set is a seeded hold-out of train split by seeker post
(EPITOME's ``sp_id`` identifies the seeker post, so grouping by the post text is the same split).

Context-only predictor (IMAGINE's "dialogue reaction")
-----------------------------------------------------
The response classifiers label every listener turn of ED train (seeker = the speaker turn before
it, response = the listener turn). A second head then learns P(mechanism) per code from the
dialogue *context only* (the same 4-view dialogue feature the emotion head uses), so the engine can
plan which mechanisms its reply should use before generating it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from empathy_nlg.datasets import Conversation, EpitomeExample, Utterance
from empathy_nlg.taxonomy import CM_CODES

VERSION = "minilm-pair-mlp-v1"
CONTEXT_VERSION = "minilm-context-mlp-v1"
CONTEXT_HEAD = "cm_context_head"


def response_head_name(code: str) -> str:
    return f"cm_response_{code.lower()}"


def pair_features(seeker_emb: np.ndarray, response_emb: np.ndarray) -> np.ndarray:
    """``[s, r, s⊙r, |s−r|]`` rows for aligned seeker/response embeddings."""
    return np.concatenate([seeker_emb, response_emb, seeker_emb * response_emb, np.abs(seeker_emb - response_emb)], 1).astype(np.float32)


def split_by_seeker(examples: Sequence[EpitomeExample], dev_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Seeded train/dev split by seeker post (all responses to a post land on the same side)."""
    def bucket(post: str) -> float:
        digest = hashlib.sha1(f"{seed}:{post}".encode("utf-8")).hexdigest()
        return int(digest[:8], 16) / 0xFFFFFFFF

    train, dev = [], []
    for i, ex in enumerate(examples):
        (dev if bucket(ex.seeker_post) < dev_fraction else train).append(i)
    return train, dev


class ResponseCMClassifier:
    """ER/IP/EX response classifiers over (seeker post, response) pairs."""

    def __init__(self, heads: Dict[str, Tuple[object, dict]], encoder) -> None:
        missing = [c for c in CM_CODES if c not in heads]
        if missing:
            raise ValueError(f"response classifiers missing for {missing}")
        self.heads = heads
        self.encoder = encoder
        self.thresholds = {c: float(cfg.get("threshold", 0.5)) for c, (_, cfg) in heads.items()}
        self.version = str(heads[CM_CODES[0]][1].get("version", VERSION))

    def proba_from_embeddings(self, seeker_emb: np.ndarray, response_emb: np.ndarray) -> Dict[str, np.ndarray]:
        from empathy_nlg.perception.common import predict_head

        feats = pair_features(seeker_emb, response_emb)
        return {c: predict_head(m, feats, "bce")[:, 0] for c, (m, _) in self.heads.items()}

    def predict_proba(self, seeker_posts: Sequence[str], responses: Sequence[str]) -> Dict[str, np.ndarray]:
        """P(mechanism present) per CM code, one float per (seeker post, response) pair."""
        if len(seeker_posts) != len(responses):
            raise ValueError("seeker_posts and responses must have the same length")
        if not len(responses):
            return {c: np.zeros(0, dtype=np.float32) for c in CM_CODES}
        s = self.encoder.encode(list(seeker_posts))
        r = self.encoder.encode(list(responses))
        return self.proba_from_embeddings(s, r)

    def predict(self, seeker_posts: Sequence[str], responses: Sequence[str]) -> Dict[str, np.ndarray]:
        """Mechanism present (bool) per CM code, using each head's dev-tuned threshold."""
        probs = self.predict_proba(seeker_posts, responses)
        return {c: probs[c] >= self.thresholds[c] for c in CM_CODES}


def load_response_classifiers(artifacts_dir: Path | None = None, encoder=None) -> ResponseCMClassifier:
    """The evaluation harness's entry point: the three committed response classifiers."""
    from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR, load_head
    from empathy_nlg.perception.encoder import SentenceEncoder

    art = Path(artifacts_dir) if artifacts_dir else DEFAULT_ARTIFACTS_DIR
    heads = {c: load_head(art, response_head_name(c)) for c in CM_CODES}
    return ResponseCMClassifier(heads, encoder if encoder is not None else SentenceEncoder())


class ContextCMPredictor:
    """P(mechanism) per code from the dialogue context (dialogue features of the emotion head)."""

    def __init__(self, model, config: dict) -> None:
        self.model = model
        self.config = config
        self.version = str(config.get("version", CONTEXT_VERSION))
        if list(config.get("codes", CM_CODES)) != list(CM_CODES):
            raise ValueError("context CM head was trained on different CM codes")

    @classmethod
    def load(cls, art_dir: Path) -> "ContextCMPredictor":
        from empathy_nlg.perception.common import load_head

        return cls(*load_head(art_dir, CONTEXT_HEAD))

    def predict_proba(self, dialogue_features: np.ndarray) -> np.ndarray:
        from empathy_nlg.perception.common import predict_head

        return predict_head(self.model, dialogue_features, "bce")


def epitome_matrix(examples: Sequence[EpitomeExample], cache) -> Tuple[np.ndarray, np.ndarray]:
    s = cache.encode([e.seeker_post for e in examples])
    r = cache.encode([e.response_post for e in examples])
    return pair_features(s, r), np.asarray([int(e.has_mechanism) for e in examples])


def train_response_classifiers(
    files: Dict[str, Sequence[EpitomeExample]], cache, out_dir: Path, seed: int = 13, dev_fraction: float = 0.15,
    hidden: int = 256, dropout: float = 0.3, epochs: int = 40, lr: float = 1e-3, progress: bool = True,
) -> Dict[str, float]:
    """One head per mechanism; threshold tuned on the held-out seekers. Returns dev F1s (percent)."""
    from empathy_nlg.perception.common import best_threshold, binary_f1s, fit_head, predict_head, save_head

    metrics: Dict[str, float] = {}
    for code in CM_CODES:
        examples = files[code]
        tr, dv = split_by_seeker(examples, dev_fraction, seed)
        X, y = epitome_matrix([examples[i] for i in tr], cache)
        Xd, yd = epitome_matrix([examples[i] for i in dv], cache)
        model, info = fit_head(
            X, y.astype(np.float32), loss="bce", out_dim=1, hidden=hidden, dropout=dropout, epochs=epochs, lr=lr,
            weight_decay=1e-2, seed=seed, X_dev=Xd, Y_dev=yd,
            score_fn=lambda p, t: binary_f1s(t, p[:, 0] >= 0.5)["macro_f1"], desc=f"CM {code} head", progress=progress,
        )
        pd = predict_head(model, Xd, "bce")[:, 0]
        thr = best_threshold(pd, yd)
        f1 = binary_f1s(yd, pd >= thr)
        metrics[f"{code.lower()}_f1"] = f1["macro_f1"]
        metrics[f"{code.lower()}_dev_n"] = int(len(yd))
        save_head(
            model,
            {"version": VERSION, "code": code, "in_dim": int(X.shape[1]), "out_dim": 1, "hidden": hidden,
             "dropout": dropout, "threshold": thr, "epochs": epochs, "best_epoch": info["best_epoch"], "seed": seed,
             "dev_fraction": dev_fraction, "train_n": int(len(y)), "dev_n": int(len(yd)), "dev_metrics": f1,
             "labels": "level>0 (weak+strong) = yes"},
            out_dir, response_head_name(code),
        )
    return metrics


def listener_examples(conversations: Sequence[Conversation]) -> Tuple[List[List[Utterance]], List[str], List[str]]:
    """(context before each listener turn, the speaker turn before it, the listener turn)."""
    contexts, seekers, responses = [], [], []
    for conv in conversations:
        for i, turn in enumerate(conv.turns):
            if i == 0 or turn.role != "listener":
                continue
            prev = [u for u in conv.turns[:i] if u.role == "speaker"]
            if not prev:
                continue
            contexts.append(list(conv.turns[:i]))
            seekers.append(prev[-1].text)
            responses.append(turn.text)
    return contexts, seekers, responses


def train_context_predictor(
    train_convs: Sequence[Conversation], dev_convs: Sequence[Conversation], cache, out_dir: Path, seed: int = 13,
    hidden: int = 256, dropout: float = 0.3, epochs: int = 15, lr: float = 1e-3, progress: bool = True,
    encoder=None,
) -> Dict[str, float]:
    """Label ED listener turns with the response classifiers, then learn them from context only."""
    from empathy_nlg.perception.common import binary_f1s, fit_head, load_head, predict_head, save_head
    from empathy_nlg.perception.emotion import features_for_dialogues

    clf = ResponseCMClassifier({c: load_head(out_dir, response_head_name(c)) for c in CM_CODES}, encoder)

    def labelled(convs):
        ctx, seek, resp = listener_examples(convs)
        probs = clf.proba_from_embeddings(cache.encode(seek), cache.encode(resp))
        hard = np.stack([(probs[c] >= clf.thresholds[c]).astype(np.float32) for c in CM_CODES], 1)
        return features_for_dialogues(ctx, cache), hard

    X, Y = labelled(train_convs)
    Xd, Yd = labelled(dev_convs)

    def score(p, t):
        return np.mean([binary_f1s(t[:, k], p[:, k] >= 0.5)["macro_f1"] for k in range(len(CM_CODES))])

    model, info = fit_head(
        X, Y, loss="bce", out_dim=len(CM_CODES), hidden=hidden, dropout=dropout, epochs=epochs, lr=lr,
        weight_decay=1e-2, seed=seed, X_dev=Xd, Y_dev=Yd, score_fn=score, desc="CM context head", progress=progress,
    )
    pd = predict_head(model, Xd, "bce")
    metrics: Dict[str, float] = {}
    for k, c in enumerate(CM_CODES):
        metrics[f"context_{c.lower()}_f1"] = binary_f1s(Yd[:, k], pd[:, k] >= 0.5)["macro_f1"]
        metrics[f"ed_train_{c.lower()}_rate"] = float(Y[:, k].mean() * 100)
    save_head(
        model,
        {"version": CONTEXT_VERSION, "codes": list(CM_CODES), "in_dim": int(X.shape[1]), "out_dim": len(CM_CODES),
         "hidden": hidden, "dropout": dropout, "epochs": epochs, "best_epoch": info["best_epoch"], "seed": seed,
         "train_n": int(len(X)), "dev_n": int(len(Xd)), "dev_metrics": metrics,
         "labels": "response classifiers' yes/no on ED listener turns (seeker = previous speaker turn)"},
        out_dir, CONTEXT_HEAD,
    )
    return metrics
