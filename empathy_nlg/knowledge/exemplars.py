"""Exemplars: how people answered similar messages in EmpatheticDialogues train.

In the spirit of exemplar-guided empathetic generation (retrieve listener replies to similar
contexts and let them guide the reply), every ED train listener turn is indexed by the speaker
turn it answers, embedded with the shared MiniLM encoder. At run time the current user message is
embedded (the perceiver already did it), the ``k`` nearest contexts are found by cosine, and their
replies join the generator's candidates; the conversation reranker then decides, with the same
terms as for generated candidates (polarity, mechanisms, grounding, no repetition).

Replies that claim the listener's own experience ("my dog died too", "I had that happen to me")
are not indexed: an assistant must not invent a life. Nor are very short or long ones.

The index holds dataset text, so it lives in the cache (``cache_dir()/exemplars/``), is built by
setup when the shared data is present (``empathy-nlg knowledge exemplars``) and is never
committed. No index → no exemplar candidates, and the engine says so once in its log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from empathy_nlg.paths import cache_dir

log = logging.getLogger(__name__)

VERSION = "ed-exemplars-v2"
#: first-person claims of experience: the listener talking about their own life
SELF_CLAIM = re.compile(
    r"\b(?:my|mine|me too|i had|i have|i've|i was|i went|i got|i lost|i remember|i used to|happened to me|"
    r"when i|i did|i know how|i feel the same|same here|i once|i want|i wish i|i love|i'd love|i would love|"
    r"i need|i hate|we|our|us)\b",
    re.IGNORECASE,
)


@dataclass
class Exemplar:
    reply: str
    context: str
    score: float


def keep_reply(text: str, min_words: int = 3, max_words: int = 28) -> bool:
    n = len(text.split())
    return min_words <= n <= max_words and not SELF_CLAIM.search(text) and "_comma_" not in text


def exemplar_pairs(conversations) -> tuple[List[str], List[str]]:
    """(speaker turn, listener reply) for every listener turn of ``conversations`` that passes :func:`keep_reply`."""
    contexts, replies = [], []
    for conv in conversations:
        for j in range(1, len(conv.turns)):
            prev, turn = conv.turns[j - 1], conv.turns[j]
            if turn.role == "listener" and prev.role == "speaker" and keep_reply(turn.text):
                contexts.append(" ".join(prev.text.split()))
                replies.append(" ".join(turn.text.split()))
    return contexts, replies


def index_dir(cache_root: Optional[Path | str] = None) -> Path:
    return (Path(cache_root) if cache_root else cache_dir()) / "exemplars"


class ExemplarIndex:
    """Cosine nearest neighbours over ED speaker turns, answering with their listener replies."""

    def __init__(self, embeddings: np.ndarray, contexts: Sequence[str], replies: Sequence[str], key: str) -> None:
        if len(embeddings) != len(contexts) or len(contexts) != len(replies):
            raise ValueError("exemplar index: embeddings, contexts and replies differ in length")
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.contexts = list(contexts)
        self.replies = list(replies)
        self.key = key
        self.version = f"{VERSION}/{key}"

    def __len__(self) -> int:
        return len(self.replies)

    # -- build / load ---------------------------------------------------------------------
    @classmethod
    def build(cls, ed_path: Path | str, encoder, cache_root: Optional[Path | str] = None, force: bool = False,
              progress: bool = True) -> "ExemplarIndex":
        from empathy_nlg.datasets import read_ed_jsonl

        ed_path = Path(ed_path)
        if not ed_path.is_file():
            raise FileNotFoundError(f"ED train file {ed_path} not found (set --data-dir or EMPATHY_NLG_DATA)")
        digest = hashlib.sha1(ed_path.read_bytes()).hexdigest()[:12]
        key = f"{VERSION}-{digest}-{getattr(encoder, 'name', 'encoder')}"
        folder = index_dir(cache_root)
        if not force:
            existing = cls.load(cache_root)
            if existing is not None and existing.key == key:
                return existing
        contexts, replies = exemplar_pairs(read_ed_jsonl(ed_path))
        unique = sorted(set(contexts))
        pos = {t: i for i, t in enumerate(unique)}
        emb = encoder.encode(unique, progress=progress)
        matrix = emb[[pos[c] for c in contexts]].astype(np.float16)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "index.tmp.npz"
        np.savez(tmp, embeddings=matrix)
        (folder / "index.tmp.json").write_text(json.dumps({"key": key, "version": VERSION, "source": str(ed_path),
                                                           "contexts": contexts, "replies": replies}))
        tmp.replace(folder / "index.npz")
        (folder / "index.tmp.json").replace(folder / "index.json")
        return cls(matrix, contexts, replies, key)

    @classmethod
    def load(cls, cache_root: Optional[Path | str] = None) -> Optional["ExemplarIndex"]:
        folder = index_dir(cache_root)
        if not (folder / "index.npz").is_file() or not (folder / "index.json").is_file():
            return None
        meta = json.loads((folder / "index.json").read_text())
        with np.load(folder / "index.npz") as data:
            emb = data["embeddings"].astype(np.float32)
        return cls(emb, meta["contexts"], meta["replies"], meta["key"])

    # -- query ----------------------------------------------------------------------------
    def nearest(self, query: np.ndarray, k: int = 3, min_score: float = 0.5, exclude: Sequence[str] = ()) -> List[Exemplar]:
        """The ``k`` best distinct replies whose context is closest to ``query`` (cosine ≥ ``min_score``)."""
        if not len(self):
            return []
        sims = self.embeddings @ np.asarray(query, dtype=np.float32).reshape(-1)
        top = np.argpartition(-sims, min(len(sims) - 1, 4 * k))[: 4 * k]
        out: List[Exemplar] = []
        seen = {" ".join(e.lower().split()) for e in exclude}
        for i in top[np.argsort(-sims[top])]:
            if sims[i] < min_score:
                break
            norm = " ".join(self.replies[i].lower().split())
            if norm in seen:
                continue
            seen.add(norm)
            out.append(Exemplar(self.replies[i], self.contexts[i], float(sims[i])))
            if len(out) == k:
                break
        return out

    def describe(self) -> Dict[str, object]:
        return {"version": self.version, "size": len(self)}
