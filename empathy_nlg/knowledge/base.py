"""The one interface every commonsense knowledge source implements, its cache and its factory.

A :class:`KnowledgeSource` answers "given this event (head), what does commonsense say for
relation R?" with up to ``k`` short tail strings, the way COMET does. Sources:

* ``comet`` — a COMET-ATOMIC-2020 BART checkpoint from a local folder (:mod:`.comet`)
* ``retrieval`` — the offline default: MiniLM nearest-neighbour retrieval over the ATOMIC-2020
  sample (:mod:`.retrieval`)
* ``none`` — returns nothing (generators run without knowledge)

Every source gets, for free, output cleaning (no ``none``, stripped, de-duplicated, at most ``k``)
and a per-input cache: an in-memory LRU plus an optional JSON file on disk, both keyed by a hash
of ``(source name, source version, head, relation, k)`` — so a changed model or index never
serves stale answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from empathy_nlg.knowledge.atomic import is_none_tail, unique_in_order
from empathy_nlg.registry import Registry

log = logging.getLogger(__name__)

Query = Tuple[str, str]  # (head, relation)


def clean_tails(tails: Sequence[str], k: int) -> List[str]:
    """Strip (spaces, trailing full stops), drop ``none``/empty, de-duplicate
    (case/punctuation-insensitive), keep ``k``."""
    stripped = [" ".join(str(t).split()).rstrip(" .") for t in tails]
    kept = [t for t in stripped if not is_none_tail(t)]
    return unique_in_order(kept)[: max(0, k)]


class JsonDiskCache:
    """A ``key → list of strings`` store in one JSON file, written atomically.

    Loaded lazily on first use; :meth:`flush` rewrites the file (temp file + rename) when entries
    were added. Cheap enough for the few thousand entries a dialogue session or an evaluation
    produces; not meant for concurrent writers (last writer wins, never a corrupt file).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._data: Optional[Dict[str, List[str]]] = None
        self._dirty = False
        self._lock = threading.Lock()

    def _load(self) -> Dict[str, List[str]]:
        if self._data is None:
            try:
                with open(self.path, encoding="utf-8") as f:
                    data = json.load(f)
                self._data = {str(k): list(v) for k, v in data.items()} if isinstance(data, dict) else {}
            except FileNotFoundError:
                self._data = {}
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable knowledge cache %s (%s)", self.path, exc)
                self._data = {}
        return self._data

    def get(self, key: str) -> Optional[List[str]]:
        with self._lock:
            value = self._load().get(key)
            return list(value) if value is not None else None

    def set(self, key: str, value: List[str]) -> None:
        with self._lock:
            self._load()[key] = list(value)
            self._dirty = True

    def __len__(self) -> int:
        return len(self._load())

    def flush(self) -> None:
        with self._lock:
            if not self._dirty or self._data is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=self.path.name, dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._data, f, ensure_ascii=False)
            os.replace(tmp, self.path)
            self._dirty = False


class KnowledgeSource(ABC):
    """Base class of commonsense knowledge sources.

    Subclasses set :attr:`name` and :attr:`version` and implement :meth:`_generate`; callers use
    :meth:`infer`. ``version`` must change whenever outputs could change (model weights, index,
    settings): it is part of every cache key.
    """

    name: str = "base"
    #: how :func:`empathy_nlg.knowledge.seeds.nec_entity_knowledge` builds the head for an entity
    #: (``{entity}`` and ``{dialogue}`` are filled in). Generative sources take NEC's
    #: "<dialogue> in this case, <entity>"; retrieval overrides it with the bare entity.
    entity_head_template: str = "{dialogue} In this case, {entity}"

    def __init__(self, cache_size: int = 4096, disk_cache: Optional[Path | str] = None) -> None:
        self.cache_size = int(cache_size)
        self._lru: "OrderedDict[str, List[str]]" = OrderedDict()
        self._disk = JsonDiskCache(disk_cache) if disk_cache else None
        self._cache_lock = threading.RLock()  # the engine may call infer from several threads
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def version(self) -> str:
        """Identifies the outputs; override (default: the class name)."""
        return type(self).__name__

    @abstractmethod
    def _generate(self, queries: Sequence[Query], k: int) -> List[List[str]]:
        """Raw candidates for each ``(head, relation)``, best first (cleaned by :meth:`infer`)."""

    # ------------------------------------------------------------------ caching
    def cache_key(self, head: str, relation: str, k: int) -> str:
        payload = json.dumps([self.name, self.version, head, relation, int(k)], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    def _cache_get(self, key: str) -> Optional[List[str]]:
        with self._cache_lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return list(self._lru[key])
        if self._disk is not None:
            value = self._disk.get(key)
            if value is not None:
                self._lru_put(key, value)
                return value
        return None

    def _lru_put(self, key: str, value: List[str]) -> None:
        with self._cache_lock:
            self._lru[key] = list(value)
            self._lru.move_to_end(key)
            while len(self._lru) > self.cache_size:
                self._lru.popitem(last=False)

    def clear_cache(self) -> None:
        """Forget the in-memory cache (the disk file is left alone)."""
        with self._cache_lock:
            self._lru.clear()

    # ------------------------------------------------------------------ public API
    def infer(self, heads: Sequence[str], relations: Sequence[str], k: int = 5) -> List[Dict[str, List[str]]]:
        """For each head: ``relation → up to k cleaned tails`` (an empty list when none).

        Heads are used as given (stripped); all ``(head, relation)`` pairs missing from the cache
        go to the source in one batch.
        """
        if isinstance(heads, str) or isinstance(relations, str):
            raise TypeError("infer() takes sequences of heads and relations, not a single string")
        heads = [" ".join(str(h).split()) for h in heads]
        results: List[Dict[str, List[str]]] = [{} for _ in heads]
        missing: "OrderedDict[Tuple[str, str], List[Tuple[int, str]]]" = OrderedDict()
        for i, head in enumerate(heads):
            for rel in relations:
                if not head:
                    results[i][rel] = []
                    continue
                key = self.cache_key(head, rel, k)
                cached = self._cache_get(key)
                if cached is not None:
                    self.cache_hits += 1
                    results[i][rel] = cached
                else:
                    missing.setdefault((head, rel), []).append((i, key))
        if missing:
            queries = list(missing)
            self.cache_misses += len(queries)
            raw = self._generate(queries, k)
            if len(raw) != len(queries):
                raise RuntimeError(f"{self.name}: {len(raw)} answers for {len(queries)} queries")
            for query, tails in zip(queries, raw):
                cleaned = clean_tails(tails, k)
                for i, key in missing[query]:
                    results[i][query[1]] = list(cleaned)
                key = missing[query][0][1]
                self._lru_put(key, cleaned)
                if self._disk is not None:
                    self._disk.set(key, cleaned)
            if self._disk is not None:
                self._disk.flush()
        # Keep the caller's relation order in every dict.
        return [{rel: res.get(rel, []) for rel in relations} for res in results]

    def describe(self) -> Dict[str, Any]:
        """Name, version and cache statistics (for /health and reports)."""
        return {"name": self.name, "version": self.version, "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses}


class NoKnowledgeSource(KnowledgeSource):
    """``{"type": "none"}``: every relation gets an empty list."""

    name = "none"

    @property
    def version(self) -> str:
        return "none-1"

    def _generate(self, queries: Sequence[Query], k: int) -> List[List[str]]:
        return [[] for _ in queries]


# ---------------------------------------------------------------------- registry
SourceFactory = Callable[..., KnowledgeSource]

#: type name → a KnowledgeSource class (built from a config with ``from_config``) or a factory
#: called with the config's keys
SOURCES: Registry[Any] = Registry("knowledge source", {
    "comet": "empathy_nlg.knowledge.comet:CometKnowledgeSource",
    "retrieval": "empathy_nlg.knowledge.retrieval:RetrievalKnowledgeSource",
})
SOURCES.register("none", lambda **_: NoKnowledgeSource())


def register_knowledge_source(type_name: str, factory: SourceFactory) -> None:
    """Make ``{"type": type_name, ...}`` configs build with ``factory(**config_without_type)``."""
    SOURCES.register(type_name, factory)


def available_knowledge_sources() -> List[str]:
    return SOURCES.names()


def load_knowledge_source_or_none(config: Mapping[str, Any], user: str, **objects: Any) -> KnowledgeSource:
    """:func:`load_knowledge_source`, or — when its files are missing (e.g. no ATOMIC-2020 sample on
    this machine) — a :class:`NoKnowledgeSource` with a warning naming what is missing, so a
    generator still answers (without commonsense) instead of failing to start."""
    try:
        return load_knowledge_source(config, **objects)
    except FileNotFoundError as exc:
        log.warning("%s runs WITHOUT commonsense knowledge: %s", user, str(exc).splitlines()[0])
        return NoKnowledgeSource()


def load_knowledge_source(config: Mapping[str, Any], **objects: Any) -> KnowledgeSource:
    """Build a source from its config section.

    ``{"type": "comet", "path": DIR, ...}``, ``{"type": "retrieval", "data_dir": DIR, ...}`` or
    ``{"type": "none"}``; the other keys go to the class's ``from_config``. ``objects`` passes
    live objects that a config cannot hold, e.g. ``encoder=`` the shared
    :class:`~empathy_nlg.perception.encoder.SentenceEncoder` (retrieval reuses it).
    """
    config = dict(config or {})
    type_name = str(config.pop("type", "retrieval")).strip().lower()
    try:
        made = SOURCES.get(type_name)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if isinstance(made, type) and hasattr(made, "from_config"):
        return made.from_config(config, **objects)
    return made(**config, **objects)
