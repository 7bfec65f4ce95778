"""Shared helpers for the perception models: cached encoding, small torch heads, save/load.

Every head in perception works on the *same* frozen MiniLM sentence embeddings
(:class:`~empathy_nlg.perception.encoder.SentenceEncoder`), so training pre-computes them once
and keeps them in an on-disk cache keyed by the text's SHA-1 (``perception/`` in the project's
one cache folder, :func:`empathy_nlg.paths.cache_dir`; ``EMPATHY_NLG_PERCEPTION_CACHE`` moves this
part alone). Inference never touches the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from empathy_nlg.paths import ARTIFACTS_DIR, cache_dir

DEFAULT_ARTIFACTS_DIR = ARTIFACTS_DIR / "perception"


def default_cache_dir() -> Path:
    """Embedding cache folder: ``$EMPATHY_NLG_PERCEPTION_CACHE``, else ``<cache_dir()>/perception``."""
    given = os.environ.get("EMPATHY_NLG_PERCEPTION_CACHE")
    path = Path(given) if given else cache_dir() / "perception"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Text → embedding store on disk (one ``.npy`` matrix + one key list per encoder name)."""

    def __init__(self, encoder, cache_dir: Optional[Path] = None) -> None:
        self.encoder = encoder
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = f"emb_{encoder.name}_{encoder.max_length}"
        self.matrix_path = self.dir / f"{stem}.npy"
        self.keys_path = self.dir / f"{stem}.keys.json"
        self.index: Dict[str, int] = {}
        self.matrix = np.zeros((0, encoder.dim), dtype=np.float32)
        for _attempt in range(5):  # another process may be mid-save: retry until both files agree
            if not (self.matrix_path.is_file() and self.keys_path.is_file()):
                break
            keys = json.loads(self.keys_path.read_text())
            matrix = np.load(self.matrix_path)
            if len(keys) == len(matrix):
                self.index = {k: i for i, k in enumerate(keys)}
                self.matrix = matrix
                break
            import time

            time.sleep(1.0)

    def encode(self, texts: Sequence[str], progress: bool = True, batch_size: int = 64) -> np.ndarray:
        """Embeddings for ``texts`` (encoding and caching only the ones not seen before)."""
        keys = [_key(t) for t in texts]
        missing: Dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k not in self.index and k not in missing:
                missing[k] = t
        if missing:
            new = self.encoder.encode(list(missing.values()), batch_size=batch_size, progress=progress)
            start = len(self.matrix)
            self.matrix = np.concatenate([self.matrix, new.astype(np.float32)], axis=0)
            for j, k in enumerate(missing):
                self.index[k] = start + j
            self._save()
        if not keys:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return self.matrix[[self.index[k] for k in keys]]

    def lookup(self, texts: Sequence[str]) -> Dict[str, np.ndarray]:
        """The embeddings this cache already holds for ``texts`` (text → row), encoding nothing."""
        return {t: self.matrix[self.index[k]] for t in dict.fromkeys(texts) if (k := _key(t)) in self.index}

    def _save(self) -> None:
        inverse: List[str] = [""] * len(self.index)
        for k, i in self.index.items():
            inverse[i] = k
        tmp = self.matrix_path.with_suffix(".tmp.npy")
        np.save(tmp, self.matrix)
        os.replace(tmp, self.matrix_path)
        tmp_keys = self.keys_path.with_suffix(".tmp.json")
        tmp_keys.write_text(json.dumps(inverse))
        os.replace(tmp_keys, self.keys_path)


class NoCache:
    """Same interface as :class:`EmbeddingCache`, encoding every time (tests, inference)."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder

    def encode(self, texts: Sequence[str], progress: bool = False, batch_size: int = 64) -> np.ndarray:
        return self.encoder.encode(list(texts), batch_size=batch_size, progress=progress)


# --------------------------------------------------------------------------------------------
# Small torch heads shared by every perception model
# --------------------------------------------------------------------------------------------


def set_threads(n: int = 2) -> None:
    """Keep training frugal on shared CPUs (at most ``n`` intra-op threads)."""
    import torch

    torch.set_num_threads(max(1, min(n, torch.get_num_threads())))


def build_mlp(in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.0):
    """A linear layer (``hidden == 0``) or a one-hidden-layer GELU MLP with dropout."""
    from torch import nn

    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


def fit_head(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    loss: str,
    out_dim: int,
    hidden: int = 256,
    dropout: float = 0.2,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 13,
    X_dev: Optional[np.ndarray] = None,
    Y_dev: Optional[np.ndarray] = None,
    score_fn=None,
    pos_weight: Optional[float] = None,
    label_smoothing: float = 0.0,
    desc: str = "head",
    progress: bool = True,
):
    """Train a head with AdamW; keep the epoch with the best ``score_fn(dev_outputs, Y_dev)``.

    ``loss`` is ``"ce"`` (softmax over ``out_dim`` classes, integer ``Y``) or ``"bce"``
    (independent sigmoids, float ``Y`` of shape ``(n, out_dim)``; soft targets allowed).
    Returns ``(model, {"best_epoch", "best_score", "history"})``; the model is in eval mode.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_mlp(X.shape[1], out_dim, hidden, dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * int(np.ceil(len(X) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    if loss == "ce":
        crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        y_t = torch.as_tensor(Y, dtype=torch.long)
    elif loss == "bce":
        pw = None if pos_weight is None else torch.tensor([pos_weight] * out_dim, dtype=torch.float32)
        crit = nn.BCEWithLogitsLoss(pos_weight=pw)
        y_t = torch.as_tensor(Y.reshape(len(Y), out_dim), dtype=torch.float32)
    else:
        raise ValueError(f"unknown loss {loss!r}")
    x_t = torch.as_tensor(X, dtype=torch.float32)
    best_state, best_score, best_epoch, history = None, -np.inf, -1, []
    iterator = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=desc, unit="epoch")
    for epoch in iterator:
        model.train()
        order = rng.permutation(len(X))
        total = 0.0
        for start in range(0, len(X), batch_size):
            idx = torch.as_tensor(order[start : start + batch_size])
            opt.zero_grad()
            out = model(x_t[idx])
            batch_loss = crit(out, y_t[idx])
            batch_loss.backward()
            opt.step()
            sched.step()
            total += float(batch_loss.detach()) * len(idx)
        score = None
        if X_dev is not None and score_fn is not None:
            score = float(score_fn(predict_head(model, X_dev, loss), Y_dev))
            if score > best_score:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append({"epoch": epoch, "loss": total / len(X), "dev": score})
        if progress:
            iterator.set_postfix(loss=f"{total / len(X):.4f}", dev=f"{score:.4f}" if score is not None else "-")
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epochs - 1
    model.eval()
    return model, {"best_epoch": best_epoch, "best_score": best_score if best_state is not None else None, "history": history}


def predict_head(model, X: np.ndarray, loss: str, batch_size: int = 4096) -> np.ndarray:
    """Probabilities: softmax rows for ``"ce"`` heads, sigmoids for ``"bce"`` heads."""
    import torch

    model.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(X), batch_size):
            logits = model(torch.as_tensor(X[start : start + batch_size], dtype=torch.float32))
            outs.append((torch.softmax(logits, -1) if loss == "ce" else torch.sigmoid(logits)).numpy())
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outs, axis=0)


def save_head(model, config: dict, out_dir: Path, name: str, half: bool = False) -> None:
    """Write ``name.safetensors`` (weights) and ``name.json`` (everything needed to rebuild it).
    ``half``: store the weights in fp16 (half the bytes; :func:`load_head` reads them back into fp32
    — round the model with :func:`round_to_half` first so that what was measured is what is stored)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / f"{name}.safetensors"))
    (out_dir / f"{name}.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def round_to_half(model) -> None:
    """Round a head's fp32 weights to the values fp16 can hold (in place, still fp32)."""
    import torch

    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())


def load_head(art_dir: Path, name: str):
    """Inverse of :func:`save_head` → ``(model in eval mode, config)``."""
    from safetensors.torch import load_file

    art_dir = Path(art_dir)
    cfg_path, w_path = art_dir / f"{name}.json", art_dir / f"{name}.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(
            f"perception artefact {name!r} missing in {art_dir}; train it with "
            f"`empathy-nlg train-perception --out {art_dir}`"
        )
    config = json.loads(cfg_path.read_text())
    model = build_mlp(int(config["in_dim"]), int(config["out_dim"]), int(config.get("hidden", 0)), float(config.get("dropout", 0.0)))
    model.load_state_dict(load_file(str(w_path)))
    model.eval()
    return model, config


def binary_f1s(y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, float]:
    """Positive-class F1, negative-class F1 and their mean (macro), as percentages."""
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    pos = f1_score(y_true, y_pred, pos_label=1, zero_division=0) * 100
    neg = f1_score(y_true, y_pred, pos_label=0, zero_division=0) * 100
    return {"pos_f1": float(pos), "neg_f1": float(neg), "macro_f1": float((pos + neg) / 2)}


def best_threshold(probs: np.ndarray, y: np.ndarray, grid: Sequence[float] = tuple(np.arange(0.1, 0.91, 0.02))) -> float:
    """The decision threshold maximising binary macro-F1 on a dev set."""
    scores = [(binary_f1s(y, probs >= t)["macro_f1"], -abs(t - 0.5), float(t)) for t in grid]
    return round(max(scores)[2], 2)
