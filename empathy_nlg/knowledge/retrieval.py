"""The offline default knowledge source: MiniLM nearest-neighbour retrieval over ATOMIC-2020.

No COMET weights exist here, but the ATOMIC-2020 sample (5,000 ``(head, relation)`` rows, 3,021
distinct heads) and COMET-BART's own generations for those rows do. For a query
``(head, relation)`` this source

1. embeds the head with the shared MiniLM encoder (after :func:`atomic_to_user`, so both
   "I failed my driving test" and "PersonX fails PersonX's test" work),
2. finds the ``top_heads`` (default 10) most similar sample heads *that have that relation*,
3. pools their gold tails and, as extra candidates, COMET-BART's generations for the same rows
   (weighted ``generation_penalty`` below the gold tails of the same head), and ranks them by
   similarity-weighted votes (``scoring="vote"``: a tail several similar events agree on wins;
   ``"nearest"`` ranks by the single most similar head instead), all rewritten into
   first-person wording, cleaned and de-duplicated.

The defaults (vote over 10 heads, penalty 0.05) were chosen on a development split (seed 7) and
reported on another (seed 13); see ``docs/knowledge.md``.

It is a *retrieval* stand-in for a generative COMET: it can only say what the sample says about
similar events, and relations that are rare in the sample (``Desires``, ``xReason``: one row each;
``Causes``: nine) give the same few answers for every query. ``docs/knowledge.md`` reports how
close it gets to held-out gold tails compared with a random baseline and with COMET-BART itself.

The head embeddings are computed once per (data files, encoder) and cached under
``cache_dir()/knowledge/`` (``empathy-nlg knowledge build``); the cache holds dataset text and is
never committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from empathy_nlg.knowledge.atomic import (
    MAPPING_VERSION,
    TAIL_MAPPING_VERSION,
    AtomicRow,
    atomic_tail_to_user,
    atomic_to_user,
    is_none_tail,
    load_atomic_rows,
    normalise_key,
)
from empathy_nlg.knowledge.base import KnowledgeSource, Query

log = logging.getLogger(__name__)

INDEX_VERSION = "1"

#: Entity-style relations have bare noun-phrase heads ("keys", "telephone"). With only 19–192
#: rows each, an unrelated query still has *some* nearest head ("dog" → AtLocation of "fight"),
#: so below this cosine nothing is returned rather than another entity's facts.
ENTITY_RELATIONS = ("ObjectUse", "AtLocation", "MadeUpOf", "HasProperty", "CapableOf", "Desires", "NotDesires")
DEFAULT_RELATION_MIN_SIMILARITY: Dict[str, float] = {r: 0.5 for r in ENTITY_RELATIONS}


def _mapping_digest(mapping: Mapping[str, float]) -> str:
    return hashlib.sha256(json.dumps(sorted(mapping.items())).encode()).hexdigest()[:6]


def encoder_name(encoder: Any) -> str:
    """A stable name for an encoder object (part of the index key)."""
    name = getattr(encoder, "name", None)
    return str(name) if name else type(encoder).__name__


def knowledge_cache_dir(cache_root: Optional[Path | str] = None) -> Path:
    """``<cache>/knowledge`` (``EMPATHY_NLG_CACHE`` or ``~/.cache/empathy-nlg`` by default)."""
    from empathy_nlg.paths import cache_dir

    root = Path(cache_root) if cache_root else cache_dir()
    path = root / "knowledge"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class AtomicIndex:
    """Sample rows plus one normalised embedding per distinct head."""

    heads: List[str]
    embeddings: np.ndarray  # (len(heads), dim) float32, rows L2-normalised
    rows: List[AtomicRow]
    row_head: List[int]  # index into ``heads`` for every row
    key: str
    _by_relation: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        by_rel: Dict[str, List[int]] = {}
        for i, row in enumerate(self.rows):
            by_rel.setdefault(row.relation, []).append(i)
        self._by_relation = {r: np.asarray(ids, dtype=np.int64) for r, ids in by_rel.items()}
        self._relation_matrix: Dict[str, np.ndarray] = {}

    def relation_matrix(self, relation: str) -> np.ndarray:
        """Head embeddings of ``relation``'s rows, aligned with :meth:`rows_for` (memoised)."""
        if relation not in self._relation_matrix:
            heads = np.asarray([self.row_head[i] for i in self.rows_for(relation)], dtype=np.int64)
            self._relation_matrix[relation] = self.embeddings[heads] if heads.size else self.embeddings[:0]
        return self._relation_matrix[relation]

    @property
    def relations(self) -> List[str]:
        return sorted(self._by_relation)

    def rows_for(self, relation: str) -> np.ndarray:
        return self._by_relation.get(relation, np.zeros(0, dtype=np.int64))

    def subset(self, head_ids: Iterable[int], tag: str = "subset") -> "AtomicIndex":
        """Only the rows whose head is in ``head_ids`` (the embeddings are shared, not recomputed)."""
        keep = set(int(h) for h in head_ids)
        pairs = [(r, h) for r, h in zip(self.rows, self.row_head) if h in keep]
        digest = hashlib.sha256(json.dumps(sorted(keep)).encode()).hexdigest()[:8]
        return AtomicIndex(
            heads=self.heads,
            embeddings=self.embeddings,
            rows=[r for r, _ in pairs],
            row_head=[h for _, h in pairs],
            key=f"{self.key}-{tag}{digest}",
        )

    @classmethod
    def from_rows(cls, rows: Sequence[AtomicRow], encoder: Any, key: str,
                  embeddings: Optional[np.ndarray] = None, progress: bool = False) -> "AtomicIndex":
        heads: List[str] = []
        head_id: Dict[str, int] = {}
        row_head: List[int] = []
        for row in rows:
            if row.head not in head_id:
                head_id[row.head] = len(heads)
                heads.append(row.head)
            row_head.append(head_id[row.head])
        if embeddings is None:
            texts = [atomic_to_user(h) for h in heads]
            kwargs = {"progress": True} if progress else {}
            embeddings = np.asarray(encoder.encode(texts, **kwargs), dtype=np.float32)
        return cls(heads=heads, embeddings=embeddings, rows=list(rows), row_head=row_head, key=key)


def build_index(
    data_dir: Optional[Path | str] = None,
    encoder: Any = None,
    cache_root: Optional[Path | str] = None,
    force: bool = False,
    progress: bool = False,
) -> AtomicIndex:
    """Load the sample and its head embeddings, computing and caching them on first use.

    Cached as ``<cache>/knowledge/atomic-index-<key>/{embeddings.npy, heads.json}``, ``key``
    hashing the data files' contents, the encoder name and the wording-mapping version.
    """
    rows, fingerprint = load_atomic_rows(data_dir)
    if encoder is None:
        encoder = load_default_encoder()
    key = hashlib.sha256(
        f"{fingerprint}|{encoder_name(encoder)}|{MAPPING_VERSION}|{INDEX_VERSION}".encode()
    ).hexdigest()[:16]
    folder = knowledge_cache_dir(cache_root) / f"atomic-index-{key}"
    emb_path, heads_path = folder / "embeddings.npy", folder / "heads.json"
    embeddings: Optional[np.ndarray] = None
    if not force and emb_path.is_file() and heads_path.is_file():
        try:
            cached_heads = json.loads(heads_path.read_text(encoding="utf-8"))
            embeddings = np.load(emb_path)
            index = AtomicIndex.from_rows(rows, encoder, key, embeddings=embeddings)
            if cached_heads != index.heads or embeddings.shape[0] != len(index.heads):
                raise ValueError("cached heads do not match the data")
            log.info("loaded ATOMIC index %s (%d heads)", folder, len(index.heads))
            return index
        except (OSError, ValueError) as exc:
            log.warning("rebuilding the ATOMIC index (%s)", exc)
    log.info("embedding %d ATOMIC rows' heads with %s (once; cached in %s)", len(rows), encoder_name(encoder), folder)
    index = AtomicIndex.from_rows(rows, encoder, key, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    # Atomic writes: a concurrent reader never sees half a file.
    tmp = folder / f".embeddings.{os.getpid()}.npy"
    np.save(tmp, index.embeddings)
    os.replace(tmp, emb_path)
    tmp_heads = folder / f".heads.{os.getpid()}.json"
    tmp_heads.write_text(json.dumps(index.heads, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp_heads, heads_path)
    return index


def load_default_encoder(path: Optional[Path | str] = None, device: Optional[str] = None) -> Any:
    """The shared MiniLM :class:`~empathy_nlg.perception.encoder.SentenceEncoder`."""
    from empathy_nlg.perception.encoder import SentenceEncoder

    return SentenceEncoder(path, device=device)


class RetrievalKnowledgeSource(KnowledgeSource):
    """Nearest-neighbour commonsense over an :class:`AtomicIndex` (see the module docstring)."""

    name = "retrieval"
    #: the index's entity heads (ObjectUse, AtLocation, …) are bare noun phrases
    entity_head_template = "{entity}"

    def __init__(
        self,
        index: AtomicIndex,
        encoder: Any,
        top_heads: int = 10,
        use_generations: bool = True,
        generation_penalty: float = 0.05,
        min_similarity: float = 0.0,
        relation_min_similarity: Optional[Mapping[str, float]] = None,
        scoring: str = "vote",
        temperature: float = 0.0,
        cache_size: int = 4096,
        disk_cache: Optional[Path | str] = None,
    ) -> None:
        super().__init__(cache_size=cache_size, disk_cache=disk_cache)
        self.index = index
        self.encoder = encoder
        self.top_heads = int(top_heads)
        self.use_generations = bool(use_generations)
        self.generation_penalty = float(generation_penalty)
        self.min_similarity = float(min_similarity)
        self.relation_min_similarity: Dict[str, float] = dict(
            DEFAULT_RELATION_MIN_SIMILARITY if relation_min_similarity is None else relation_min_similarity
        )
        if scoring not in ("nearest", "vote"):
            raise ValueError(f"scoring must be 'nearest' or 'vote', got {scoring!r}")
        self.scoring = scoring
        self.temperature = float(temperature)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], encoder: Any = None, **_: Any) -> "RetrievalKnowledgeSource":
        """Config keys: ``data_dir``, ``cache_dir``, ``encoder_path``, ``device``, ``top_heads``,
        ``use_generations``, ``generation_penalty``, ``min_similarity``, ``relation_min_similarity``
        (relation → cosine floor; default 0.5 for entity relations), ``scoring``, ``temperature``
        (0: votes weighted by cosine; > 0: by ``exp((cos - best) / T)``), ``cache_size``,
        ``disk_cache`` (a path, or ``true`` for ``<cache>/knowledge/infer-retrieval.json``)."""
        config = dict(config)
        data_dir = config.pop("data_dir", None)
        cache_root = config.pop("cache_dir", None)
        encoder_path = config.pop("encoder_path", None)
        device = config.pop("device", None)
        if encoder is None:
            encoder = load_default_encoder(encoder_path, device=device)
        if config.get("disk_cache") is True:
            config["disk_cache"] = knowledge_cache_dir(cache_root) / "infer-retrieval.json"
        index = build_index(data_dir, encoder, cache_root=cache_root)
        return cls(index, encoder, **config)

    @property
    def version(self) -> str:
        return (
            f"retrieval-{self.index.key}-h{self.top_heads}-g{int(self.use_generations)}"
            f"-p{self.generation_penalty:g}-m{self.min_similarity:g}-{self.scoring}-t{self.temperature:g}"
            f"-r{_mapping_digest(self.relation_min_similarity)}-tm{TAIL_MAPPING_VERSION}"
        )

    def neighbours(self, query_embedding: np.ndarray, relation: str, n: int) -> List[tuple]:
        """``[(row id, similarity)]`` of the ``n`` rows of ``relation`` whose heads are closest."""
        row_ids = self.index.rows_for(relation)
        if row_ids.size == 0:
            return []
        sims = self.index.relation_matrix(relation) @ query_embedding
        n = min(n, sims.shape[0])
        top = np.argpartition(-sims, n - 1)[:n]
        top = top[np.argsort(-sims[top], kind="stable")]
        floor = max(self.min_similarity, self.relation_min_similarity.get(relation, self.min_similarity))
        return [(int(row_ids[j]), float(sims[j])) for j in top if sims[j] >= floor]

    def _candidates(self, neighbours: Sequence[tuple]) -> List[str]:
        """Rank the neighbours' tails.

        ``nearest``: by the similarity of the head they came from (gold before generations of
        the same head, frequent gold tails first). ``vote``: a tail's score is the sum of those
        weights over every neighbour (and annotator) that gave it, so tails several similar
        events agree on rise to the top.
        """
        scored: Dict[str, list] = {}  # key -> [score, first order, text]
        order = 0
        best = max((sim for _, sim in neighbours), default=0.0)
        for row_id, sim in neighbours:
            if self.temperature > 0:  # sharpen: weight exp((sim - best) / T) in (0, 1]
                sim = float(np.exp((sim - best) / self.temperature))
            row = self.index.rows[row_id]
            weighted = [(t, sim) for t in row.tails if not is_none_tail(t)]
            if self.use_generations:
                weighted += [(t, sim - self.generation_penalty) for t in row.generations if not is_none_tail(t)]
            for text, weight in weighted:
                weight = max(weight, 1e-6)  # a dissimilar neighbour never votes *against* a tail
                user_text = atomic_tail_to_user(text)
                key = normalise_key(user_text)
                if key not in scored:
                    scored[key] = [weight, order, user_text]
                    order += 1
                elif self.scoring == "vote":
                    scored[key][0] += weight
                else:
                    # nearest: repeats within the same head (several annotators) break ties
                    scored[key][0] = max(scored[key][0], weight) + 1e-6
        ranked = sorted(scored.values(), key=lambda x: (-x[0], x[1]))
        return [text for _, _, text in ranked]

    def _generate(self, queries: Sequence[Query], k: int) -> List[List[str]]:
        texts = list(dict.fromkeys(atomic_to_user(h) for h, _ in queries))
        emb = np.asarray(self.encoder.encode(texts), dtype=np.float32)
        pos = {t: i for i, t in enumerate(texts)}
        out: List[List[str]] = []
        for head, relation in queries:
            q = emb[pos[atomic_to_user(head)]]
            out.append(self._candidates(self.neighbours(q, relation, self.top_heads)))
        return out
