"""Emotion-cause extraction, RECCON-style, at utterance and word level.

Utterance level — causal emotion entailment with context (Poria et al. 2021, RECCON subtask 2)
--------------------------------------------------------------------------------------------
Pairs are built as RECCON builds its ``*_classification_*_with_context`` sets: for every target
utterance ``U_t`` with a non-neutral emotion, every candidate utterance ``U_c`` with ``c ≤ t``
(the target itself included) forms a pair; it is positive when the candidate's turn number is in
the target's ``expanded emotion cause evidence`` (the latent-cause marker ``"b"`` is ignored).
RECCON feeds ``<emotion> <target> <SEP> <candidate> <SEP> <history>`` to RoBERTa; we adapt this
to the frozen MiniLM embeddings: the pair feature (:func:`pair_features`) concatenates the target
and candidate embeddings, their product and absolute difference, the embedding of the emotion
*word* and its product with the candidate, the mean embedding of the history ``U_1..U_t``, plus
positional scalars (distance buckets, same speaker, first utterance, relative position). A small
MLP scores the pair. Because the emotion enters as the encoder's embedding of its name, the same
head serves RECCON's 6 DailyDialog emotions and ED's 32 without a hand-written label mapping.

Applied to EmpatheticDialogues (Gao et al. 2021): the target is the last speaker turn, the
emotion is the conversation's (or the predicted) ED emotion, the candidates are the utterances up
to it; the Perceiver keeps only speaker (user) candidates. ED uses its own decision threshold,
picked on ED valid against Gao et al.'s published cause labels.

Word level (Gao et al.'s cause words)
-------------------------------------
Gao et al. label as cause words the tokens of cause utterances. We train a token-level logistic
head on MiniLM's contextual token states of RECCON cause utterances, with labels from RECCON's
human ``expanded emotion cause span`` strings (tokens inside a span = 1) — a finer signal than
"all tokens of the utterance". Feature per token: ``[h_token, h_token ⊙ e_target, e_emotion]``.
Positive tokens are merged into character spans (:meth:`CauseModel.token_spans`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from empathy_nlg.datasets import Conversation, RecconDialogue, dialogue_until_last_speaker
from empathy_nlg.taxonomy import EMOTIONS, RECCON_EMOTIONS

PAIR_HEAD = "cause_pair_head"
SPAN_HEAD = "cause_span_head"
EMOTION_VECTORS = "emotion_name_vectors.npz"
VERSION = "minilm-pair-mlp-v1"
DISTANCE_BUCKETS = 6  # 0, 1, 2, 3, 4, ≥5 utterances back
N_SCALARS = DISTANCE_BUCKETS + 4
NEUTRAL = RECCON_EMOTIONS[-1]


def emotion_names() -> List[str]:
    """Every emotion word the cause head may be conditioned on (ED's 32 + RECCON's non-neutral)."""
    return list(EMOTIONS) + [e for e in RECCON_EMOTIONS if e != NEUTRAL and e not in EMOTIONS]


def pair_features(
    emb: np.ndarray, speakers: Sequence[str], target: int, candidates: Sequence[int], emotion_vec: np.ndarray
) -> np.ndarray:
    """Features of (target, candidate) pairs of one dialogue (see module doc); one row per candidate."""
    cands = np.asarray(candidates, dtype=int)
    e_t = emb[target][None, :].repeat(len(cands), 0)
    e_c = emb[cands]
    e_emo = emotion_vec[None, :].repeat(len(cands), 0)
    history = emb[: target + 1].mean(0)[None, :].repeat(len(cands), 0)
    dist = np.minimum(target - cands, DISTANCE_BUCKETS - 1)
    scal = np.zeros((len(cands), N_SCALARS), dtype=np.float32)
    scal[np.arange(len(cands)), dist] = 1.0
    scal[:, DISTANCE_BUCKETS] = [float(speakers[c] == speakers[target]) for c in cands]
    scal[:, DISTANCE_BUCKETS + 1] = (cands == 0).astype(np.float32)
    scal[:, DISTANCE_BUCKETS + 2] = cands / max(target, 1)
    scal[:, DISTANCE_BUCKETS + 3] = min(target, 20) / 20.0
    return np.concatenate([e_t, e_c, e_t * e_c, np.abs(e_t - e_c), e_emo, e_emo * e_c, history, scal], 1).astype(np.float32)


@dataclass
class PairSet:
    """Pairs of a corpus: which dialogue, target, candidate, label and the target's emotion word."""

    dialogue: List[int]
    target: List[int]
    candidate: List[int]
    label: List[int]
    emotion: List[str]

    def __len__(self) -> int:
        return len(self.label)


def reccon_pairs(dialogues: Sequence[RecconDialogue]) -> PairSet:
    """RECCON causal-emotion-entailment pairs with context (see module doc)."""
    out = PairSet([], [], [], [], [])
    for d, dlg in enumerate(dialogues):
        for t, utt in enumerate(dlg.utterances):
            if utt.emotion == NEUTRAL or not utt.emotion:
                continue
            causes = set(utt.cause_turns)
            for c in range(t + 1):
                out.dialogue.append(d)
                out.target.append(t)
                out.candidate.append(c)
                out.label.append(int(dlg.utterances[c].turn in causes))
                out.emotion.append(utt.emotion)
    return out


def ed_cause_pairs(conversations: Sequence[Conversation], speaker_only: bool = False) -> PairSet:
    """ED pairs: target = last speaker turn, candidates = utterances up to it; gold = ``cause_indices``."""
    out = PairSet([], [], [], [], [])
    for d, conv in enumerate(conversations):
        dlg = dialogue_until_last_speaker(conv)
        t = len(dlg) - 1
        gold = set(conv.cause_indices or [])
        for c in range(t + 1):
            if speaker_only and dlg[c].role != "speaker":
                continue
            out.dialogue.append(d)
            out.target.append(t)
            out.candidate.append(c)
            out.label.append(int(c in gold))
            out.emotion.append(conv.emotion)
    return out


def build_pair_matrix(
    pairs: PairSet, embeddings: Sequence[np.ndarray], speakers: Sequence[Sequence[str]], emotion_vectors: Dict[str, np.ndarray]
) -> np.ndarray:
    """Stack :func:`pair_features` for a :class:`PairSet` (grouped per (dialogue, target))."""
    rows: List[np.ndarray] = []
    i = 0
    n = len(pairs)
    while i < n:
        j = i
        while j < n and pairs.dialogue[j] == pairs.dialogue[i] and pairs.target[j] == pairs.target[i]:
            j += 1
        d, t = pairs.dialogue[i], pairs.target[i]
        rows.append(pair_features(embeddings[d], speakers[d], t, pairs.candidate[i:j], emotion_vectors[pairs.emotion[i]]))
        i = j
    return np.concatenate(rows) if rows else np.zeros((0, 1), dtype=np.float32)


# ------------------------------------------------------------------------------------------
# word level
# ------------------------------------------------------------------------------------------


def span_char_labels(text: str, spans: Sequence[str]) -> np.ndarray:
    """A 0/1 mask over the characters of ``text`` covered by any of ``spans`` (exact, then case-folded)."""
    mask = np.zeros(len(text), dtype=np.int8)
    lowered = text.lower()
    for span in spans:
        span = span.strip()
        if not span:
            continue
        for hay, needle in ((text, span), (lowered, span.lower())):
            k = hay.find(needle)
            if k >= 0:
                mask[k : k + len(needle)] = 1
                break
    return mask


def token_features(hidden: np.ndarray, target_vec: np.ndarray, emotion_vec: np.ndarray) -> np.ndarray:
    """Per-token features ``[h, h ⊙ e_target, e_emotion]`` for the span head."""
    n = len(hidden)
    return np.concatenate([hidden, hidden * target_vec[None, :], emotion_vec[None, :].repeat(n, 0)], 1).astype(np.float32)


def merge_token_spans(offsets: Sequence[Tuple[int, int]], keep: Sequence[bool], text: str) -> List[List[int]]:
    """Merge kept word-piece offsets into ``[start, end)`` spans widened to whole words."""
    spans: List[List[int]] = []
    for (s, e), k in zip(offsets, keep):
        if not k or e <= s:
            continue
        while s > 0 and text[s - 1].isalnum():
            s -= 1
        while e < len(text) and text[e].isalnum():
            e += 1
        if spans and s <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    return spans


_WORD = re.compile(r"\w", re.UNICODE)


class CauseModel:
    """Pair head + span head + the emotion-word vectors they are conditioned on."""

    def __init__(self, pair_model, pair_config: dict, span_model, span_config: dict, emotion_vectors: Dict[str, np.ndarray]) -> None:
        self.pair_model = pair_model
        self.pair_config = pair_config
        self.span_model = span_model
        self.span_config = span_config
        self.emotion_vectors = emotion_vectors
        self.version = str(pair_config.get("version", VERSION))
        self.reccon_threshold = float(pair_config.get("reccon_threshold", 0.5))
        self.ed_threshold = float(pair_config.get("ed_threshold", self.reccon_threshold))
        self.span_threshold = float(span_config.get("threshold", 0.5)) if span_config else 0.5

    @classmethod
    def load(cls, art_dir: Path) -> "CauseModel":
        from empathy_nlg.perception.common import load_head

        pair_model, pair_cfg = load_head(art_dir, PAIR_HEAD)
        span_model, span_cfg = (None, {})
        if (Path(art_dir) / f"{SPAN_HEAD}.json").is_file():
            span_model, span_cfg = load_head(art_dir, SPAN_HEAD)
        return cls(pair_model, pair_cfg, span_model, span_cfg, load_emotion_vectors(art_dir))

    def emotion_vector(self, emotion: str) -> np.ndarray:
        key = emotion.strip().lower()
        if key not in self.emotion_vectors:
            raise ValueError(f"no emotion vector for {emotion!r}; known: ED's 32 and RECCON's emotions")
        return self.emotion_vectors[key]

    def score_pairs(self, features: np.ndarray) -> np.ndarray:
        from empathy_nlg.perception.common import predict_head

        return predict_head(self.pair_model, features, "bce")[:, 0]

    def score_candidates(self, emb: np.ndarray, speakers: Sequence[str], target: int, candidates: Sequence[int], emotion: str) -> np.ndarray:
        """P(cause) for each candidate of one target utterance."""
        if not len(candidates):
            return np.zeros(0, dtype=np.float32)
        return self.score_pairs(pair_features(emb, speakers, target, candidates, self.emotion_vector(emotion)))

    def token_spans(self, text: str, hidden: np.ndarray, offsets: Sequence[Tuple[int, int]], target_vec: np.ndarray, emotion: str) -> List[List[int]]:
        """Character spans of cause words in one cause utterance (at least the best-scoring word)."""
        from empathy_nlg.perception.common import predict_head

        if self.span_model is None or not len(offsets):
            return [[0, len(text)]] if text else []
        valid = [i for i, (s, e) in enumerate(offsets) if e > s and _WORD.search(text[s:e] or "")]
        if not valid:
            return []
        feats = token_features(hidden[valid], target_vec, self.emotion_vector(emotion))
        probs = predict_head(self.span_model, feats, "bce")[:, 0]
        keep = probs >= self.span_threshold
        if not keep.any():
            keep[int(np.argmax(probs))] = True
        return merge_token_spans([tuple(offsets[i]) for i in valid], keep.tolist(), text)


def save_emotion_vectors(encoder, out_dir: Path) -> Dict[str, np.ndarray]:
    """Embed every emotion word once and store them with the cause heads."""
    names = emotion_names()
    vecs = encoder.encode(names)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    np.savez(Path(out_dir) / EMOTION_VECTORS, names=np.array(names), vectors=vecs.astype(np.float32))
    return {n: v for n, v in zip(names, vecs)}


def load_emotion_vectors(art_dir: Path) -> Dict[str, np.ndarray]:
    path = Path(art_dir) / EMOTION_VECTORS
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing; train the cause model with `empathy-nlg train-perception --task cause`")
    data = np.load(path)
    return {str(n): v for n, v in zip(data["names"], data["vectors"])}


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------


def _dialogue_embeddings(texts_per_dialogue: Sequence[Sequence[str]], cache) -> List[np.ndarray]:
    flat = sorted({t for texts in texts_per_dialogue for t in texts})
    emb = cache.encode(flat)
    index = {t: i for i, t in enumerate(flat)}
    return [emb[[index[t] for t in texts]] for texts in texts_per_dialogue]


def with_missing_emotions(emotion_vectors: Dict[str, np.ndarray], words: Sequence[str], cache) -> Dict[str, np.ndarray]:
    """Add embeddings of emotion words not stored yet (RECCON files contain variants such as
    ``happy`` or ``surprised``); the encoder embeds any word, so no label mapping is needed."""
    missing = sorted({w for w in words if w not in emotion_vectors})
    if not missing:
        return emotion_vectors
    out = dict(emotion_vectors)
    out.update(zip(missing, cache.encode(missing, progress=False)))
    return out


def reccon_matrix(dialogues: Sequence[RecconDialogue], cache, emotion_vectors) -> Tuple[np.ndarray, np.ndarray, PairSet]:
    pairs = reccon_pairs(dialogues)
    emotion_vectors = with_missing_emotions(emotion_vectors, pairs.emotion, cache)
    embs = _dialogue_embeddings([[u.text for u in d.utterances] for d in dialogues], cache)
    speakers = [[u.speaker for u in d.utterances] for d in dialogues]
    return build_pair_matrix(pairs, embs, speakers, emotion_vectors), np.asarray(pairs.label), pairs


def ed_matrix(conversations: Sequence[Conversation], cache, emotion_vectors, speaker_only: bool = False) -> Tuple[np.ndarray, np.ndarray, PairSet]:
    pairs = ed_cause_pairs(conversations, speaker_only=speaker_only)
    emotion_vectors = with_missing_emotions(emotion_vectors, pairs.emotion, cache)
    dlgs = [dialogue_until_last_speaker(c) for c in conversations]
    embs = _dialogue_embeddings([[u.text for u in d] for d in dlgs], cache)
    speakers = [[u.role for u in d] for d in dlgs]
    return build_pair_matrix(pairs, embs, speakers, emotion_vectors), np.asarray(pairs.label), pairs


def _span_training_data(dialogues: Sequence[RecconDialogue], encoder, emotion_vectors, cache, max_items: int, seed: int):
    """Token features/labels from RECCON positive pairs whose span strings are found in the candidate."""
    items = []
    for dlg in dialogues:
        for t, utt in enumerate(dlg.utterances):
            if utt.emotion == NEUTRAL or not utt.cause_spans:
                continue
            for c in range(t + 1):
                if dlg.utterances[c].turn not in utt.cause_turns:
                    continue
                cand = dlg.utterances[c].text
                mask = span_char_labels(cand, utt.cause_spans)
                if mask.any():
                    items.append((cand, utt.text, utt.emotion, mask))
    rng = np.random.default_rng(seed)
    if len(items) > max_items:
        items = [items[i] for i in sorted(rng.choice(len(items), max_items, replace=False))]
    target_vecs = cache.encode([it[1] for it in items], progress=False) if items else None
    emo_vecs = with_missing_emotions(emotion_vectors, [it[2] for it in items], cache)
    feats, labels = [], []
    for start in range(0, len(items), 32):
        chunk = items[start : start + 32]
        hidden, mask_t, offsets = encoder.token_embeddings([it[0] for it in chunk])
        hidden = hidden.float().cpu().numpy()
        for k, (cand, _tgt, emo, cmask) in enumerate(chunk):
            offs = offsets[k].tolist()
            valid = [i for i, (s, e) in enumerate(offs) if e > s and _WORD.search(cand[s:e])]
            if not valid:
                continue
            feats.append(token_features(hidden[k][valid], target_vecs[start + k], emo_vecs[emo]))
            labels.append(np.array([float(cmask[s:e].any()) for s, e in (offs[i] for i in valid)], dtype=np.float32))
    return np.concatenate(feats), np.concatenate(labels), len(items)


def train_cause(
    train_dialogues: Sequence[RecconDialogue],
    dev_dialogues: Sequence[RecconDialogue],
    ed_dev: Optional[Sequence[Conversation]],
    encoder,
    cache,
    out_dir: Path,
    seed: int = 13,
    hidden: int = 128,
    dropout: float = 0.3,
    epochs: int = 12,
    lr: float = 1e-3,
    span_items: int = 2500,
    progress: bool = True,
) -> Dict[str, float]:
    """Train the pair head on RECCON (threshold picked on RECCON valid), the span head, and pick
    the ED threshold on ``ed_dev`` (Gao et al.'s labels) when given. Returns dev metrics."""
    from empathy_nlg.perception.common import best_threshold, binary_f1s, fit_head, save_head

    emotion_vectors = save_emotion_vectors(encoder, out_dir)
    X, y, _ = reccon_matrix(train_dialogues, cache, emotion_vectors)
    Xd, yd, _ = reccon_matrix(dev_dialogues, cache, emotion_vectors)
    pos_weight = float((y == 0).sum() / max((y == 1).sum(), 1))
    model, info = fit_head(
        X, y.astype(np.float32), loss="bce", out_dim=1, hidden=hidden, dropout=dropout, epochs=epochs, lr=lr,
        weight_decay=1e-2, seed=seed, X_dev=Xd, Y_dev=yd, pos_weight=pos_weight ** 0.5,
        score_fn=lambda p, t: binary_f1s(t, p[:, 0] >= 0.5)["macro_f1"], desc="cause pair head", progress=progress,
    )
    from empathy_nlg.perception.common import predict_head

    pd = predict_head(model, Xd, "bce")[:, 0]
    thr = best_threshold(pd, yd)
    metrics = {f"reccon_valid_{k}": v for k, v in binary_f1s(yd, pd >= thr).items()}
    metrics["reccon_valid_n"] = int(len(yd))
    metrics["reccon_threshold"] = thr
    ed_thr = thr
    if ed_dev:
        Xe, ye, _ = ed_matrix(ed_dev, cache, emotion_vectors)
        pe = predict_head(model, Xe, "bce")[:, 0]
        ed_thr = best_threshold(pe, ye)
        metrics.update({f"ed_valid_{k}": v for k, v in binary_f1s(ye, pe >= ed_thr).items()})
        metrics["ed_valid_candidate_accuracy"] = float(((pe >= ed_thr) == ye).mean() * 100)
        metrics["ed_threshold"] = ed_thr
    config = {
        "version": VERSION, "in_dim": int(X.shape[1]), "out_dim": 1, "hidden": hidden, "dropout": dropout,
        "epochs": epochs, "best_epoch": info["best_epoch"], "lr": lr, "seed": seed, "train_pairs": int(len(y)),
        "train_positive": int(y.sum()), "reccon_threshold": thr, "ed_threshold": ed_thr, "dev_metrics": metrics,
        "pairs": "non-neutral target x every candidate at or before it; positive = in expanded emotion cause evidence",
    }
    save_head(model, config, out_dir, PAIR_HEAD)

    # word level
    Xs, ys, n_items = _span_training_data(train_dialogues, encoder, emotion_vectors, cache, span_items, seed)
    Xsd, ysd, _ = _span_training_data(dev_dialogues, encoder, emotion_vectors, cache, span_items, seed)
    span_model, sinfo = fit_head(
        Xs, ys, loss="bce", out_dim=1, hidden=64, dropout=0.1, epochs=15, lr=2e-3, weight_decay=1e-2, seed=seed,
        X_dev=Xsd, Y_dev=ysd, score_fn=lambda p, t: binary_f1s(t, p[:, 0] >= 0.5)["pos_f1"],
        desc="cause span head", progress=progress,
    )
    ps = predict_head(span_model, Xsd, "bce")[:, 0]
    span_thr = best_threshold(ps, ysd)
    span_metrics = binary_f1s(ysd, ps >= span_thr)
    metrics["reccon_valid_token_pos_f1"] = span_metrics["pos_f1"]
    save_head(
        span_model,
        {"version": "minilm-token-mlp-v1", "in_dim": int(Xs.shape[1]), "out_dim": 1, "hidden": 64, "dropout": 0.1,
         "threshold": span_thr, "train_utterances": n_items, "train_tokens": int(len(ys)), "best_epoch": sinfo["best_epoch"],
         "dev_token_metrics": span_metrics, "labels": "RECCON expanded emotion cause span strings"},
        out_dir, SPAN_HEAD,
    )
    return metrics


# ------------------------------------------------------------------------------------------
# annotating ED conversations (Gao et al. annotate ED train with their RECCON-trained detector)
# ------------------------------------------------------------------------------------------


def annotate_conversations(conversations: Sequence[Conversation], model: CauseModel, cache, out_path: Path,
                           progress: bool = True) -> int:
    """Write ``{conv_id, utters, context, emotion_cause}`` jsonl (raw-text utterances).

    For each conversation the target is its last speaker turn with the *gold* conversation
    emotion; every speaker turn up to it is a candidate; ``emotion_cause`` lists the indices
    (into ``utters``, i.e. all turns) scoring at least the ED threshold — at least the best one.
    Returns the number of conversations written.
    """
    import json

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dlgs = [dialogue_until_last_speaker(c) for c in conversations]
    embs = _dialogue_embeddings([[u.text for u in d] for d in dlgs], cache)
    iterator = zip(conversations, dlgs, embs)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(conversations), desc="annotating causes", unit="conv")
    n = 0
    with out_path.open("w", encoding="utf-8") as fh:
        for conv, dlg, emb in iterator:
            roles = [u.role for u in dlg]
            speakers = [i for i, r in enumerate(roles) if r == "speaker"]
            causes: List[int] = []
            if speakers:
                scores = model.score_candidates(emb, roles, len(dlg) - 1, speakers, conv.emotion)
                causes = [speakers[k] for k, s in enumerate(scores) if s >= model.ed_threshold] or [speakers[int(np.argmax(scores))]]
            record = {"conv_id": conv.conv_id, "utters": [u.text for u in conv.turns], "context": conv.emotion,
                      "emotion_cause": causes}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
