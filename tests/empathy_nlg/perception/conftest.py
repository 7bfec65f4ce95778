"""Shared fixtures for perception tests: a tiny deterministic fake encoder (no model loading)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest


class KeywordEncoder:
    """Embeds a text as the normalised sum of one random unit vector per word (seeded by the word).

    Texts sharing a keyword therefore share a direction, so heads can learn from them; the
    interface mirrors ``SentenceEncoder.encode`` (and works as a cache: ``encode(texts, progress=...)``).
    """

    name = "keyword-fake"
    max_length = 32

    def __init__(self, dim: int = 24) -> None:
        self.dim = dim

    def _word(self, w: str) -> np.ndarray:
        seed = int(hashlib.md5(w.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def encode(self, texts, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        rows = []
        for t in texts:
            words = re.findall(r"\w+", t.lower()) or ["."]
            v = np.sum([self._word(w) for w in words], axis=0)
            rows.append(v / (np.linalg.norm(v) + 1e-9))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)


@pytest.fixture
def fake_encoder() -> KeywordEncoder:
    return KeywordEncoder()
