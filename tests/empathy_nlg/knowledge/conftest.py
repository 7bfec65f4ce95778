"""Fixtures for the knowledge tests: a tiny bag-of-words encoder and a tiny ATOMIC-format sample.

Nothing here reads the shared data or loads a real model.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest


class FakeEncoder:
    """Hashed bag of (crudely stemmed) words, L2-normalised: near-identical texts are neighbours."""

    name = "fake-bow"
    dim = 256

    def __init__(self) -> None:
        self.calls: List[int] = []

    @staticmethod
    def _stem(word: str) -> str:
        for suffix in ("ing", "ed", "es", "s"):
            if word.endswith(suffix) and len(word) > len(suffix) + 2:
                return word[: -len(suffix)]
        return word

    def encode(self, texts: Sequence[str], **_: object) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z']+", text.lower()):
                out[i, zlib.crc32(self._stem(word).encode()) % self.dim] += 1.0
            norm = np.linalg.norm(out[i])
            if norm:
                out[i] /= norm
        return out


TSV_ROWS = [
    ("PersonX fails PersonX's driving test", "xReact", ["sad", "disappointed", "none"]),
    ("PersonX fails PersonX's driving test", "xWant", ["to try again", "to practice driving"]),
    ("PersonX fails PersonX's driving test", "oReact", ["PersonY feels sorry for PersonX"]),
    ("PersonX wins the lottery", "xReact", ["happy", "excited", "rich"]),
    ("PersonX wins the lottery", "xWant", ["to buy a house", "none"]),
    ("PersonX bakes a cake for PersonY", "xIntent", ["to make PersonY happy", "to celebrate"]),
    ("PersonX bakes a cake for PersonY", "xReact", ["proud"]),
    ("PersonX loses PersonX's keys", "xNeed", ["to have keys", "none"]),
    ("PersonX loses PersonX's keys", "xEffect", ["looks for them", "is late"]),
    ("PersonX loses PersonX's keys", "xAttr", ["careless"]),
    ("PersonX walks the dog", "xEffect", ["gets exercise", "none", "none"]),
    ("PersonX is sad", "Causes", ["crying"]),
    ("PersonX is tired", "xReason", ["worked all night"]),
    ("keys", "ObjectUse", ["open the door", "start the car"]),
    ("keys", "AtLocation", ["pocket", "key ring"]),
    ("keys", "HasProperty", ["metal", "small"]),
    ("cake", "MadeUpOf", ["flour", "sugar"]),
    ("cake", "HasProperty", ["sweet"]),
    ("dog", "CapableOf", ["bark"]),
    ("dog", "Desires", ["a walk"]),
    ("car", "ObjectUse", ["drive to work"]),
    ("car", "AtLocation", ["garage"]),
    ("PersonX forgets the test", "xReact", ["none", "none"]),
]
GENERATIONS: Dict[tuple, List[str]] = {
    ("PersonX fails PersonX's driving test", "xReact"): ["upset", "sad", "none"],
    ("PersonX wins the lottery", "xReact"): ["lucky"],
}


def write_sample(root: Path, with_generations: bool = True) -> Path:
    """Write the tiny sample as ``root/atomic2020_sample/*``; returns ``root``."""
    folder = root / "atomic2020_sample"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "atomic2020_test_sample.tsv", "w", encoding="utf-8") as f:
        for head, rel, tails in TSV_ROWS:
            f.write(f"{head} @@ {rel}\t{'| '.join(tails)}\n")
    if with_generations:
        with open(folder / "comet_bart_generations.jsonl", "w", encoding="utf-8") as f:
            for head, rel, tails in TSV_ROWS:
                gens = GENERATIONS.get((head, rel), [])
                f.write(json.dumps({"head": head, "relation": rel, "tails": tails,
                                    "generations": gens[1:], "greedy": gens[0] if gens else ""}) + "\n")
    return root


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache or the shared data from tests."""
    monkeypatch.setenv("EMPATHY_NLG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMPATHY_NLG_DATA", str(tmp_path / "no-data-here"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def encoder_factory() -> type:
    """The FakeEncoder class (test modules cannot import conftest by name)."""
    return FakeEncoder


@pytest.fixture
def sample_writer():  # type: ignore[no-untyped-def]
    """:func:`write_sample` (test modules cannot import conftest by name)."""
    return write_sample
