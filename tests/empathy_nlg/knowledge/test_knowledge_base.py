"""The KnowledgeSource interface: cleaning, the LRU + disk cache, the factory, wording maps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence

import pytest

from empathy_nlg.knowledge.atomic import atomic_tail_to_user, atomic_to_user, user_to_atomic
from empathy_nlg.knowledge.base import (
    KnowledgeSource,
    NoKnowledgeSource,
    clean_tails,
    load_knowledge_source,
    register_knowledge_source,
)


class EchoSource(KnowledgeSource):
    """Answers ``[head/relation, none, duplicates…]`` and counts calls."""

    name = "echo"

    def __init__(self, tag: str = "v1", **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.tag = tag
        self.batches: List[List[tuple]] = []

    @property
    def version(self) -> str:
        return self.tag

    def _generate(self, queries: Sequence[tuple], k: int) -> List[List[str]]:
        self.batches.append(list(queries))
        return [[f"{h}/{r}", "none", f"{h}/{r}.", " ", f"  {h}/{r} extra ", "NONE", "a", "b", "c", "d"]
                for h, r in queries]


def test_clean_tails() -> None:
    assert clean_tails(["none", " to cry ", "To cry.", "", "None", "sad", "sad"], 5) == ["to cry", "sad"]
    assert clean_tails(["a", "b", "c"], 2) == ["a", "b"]
    assert clean_tails(["a"], 0) == []


def test_infer_shape_cleaning_and_relation_order() -> None:
    src = EchoSource()
    out = src.infer(["I lost my keys", "it rains"], ["xWant", "xReact"], k=3)
    assert [list(o) for o in out] == [["xWant", "xReact"], ["xWant", "xReact"]]
    assert out[0]["xWant"] == ["I lost my keys/xWant", "I lost my keys/xWant extra", "a"]
    assert all(len(v) <= 3 and "none" not in [t.lower() for t in v] for o in out for v in o.values())
    assert len(src.batches) == 1 and len(src.batches[0]) == 4  # one batch for all misses


def test_lru_cache_and_duplicates() -> None:
    src = EchoSource(cache_size=2)
    src.infer(["a", "a"], ["xReact"], k=2)
    assert src.batches == [[("a", "xReact")]]  # duplicate heads queried once
    src.infer(["a"], ["xReact"], k=2)
    assert len(src.batches) == 1 and src.cache_hits >= 1
    src.infer(["a"], ["xReact"], k=3)  # k is part of the key
    assert len(src.batches) == 2
    src.infer(["b", "c"], ["xReact"], k=2)  # evicts "a" (size 2)
    src.infer(["a"], ["xReact"], k=2)
    assert len(src.batches) == 4


def test_disk_cache_survives_processes_and_respects_version(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    first = EchoSource(disk_cache=path)
    answer = first.infer(["I failed"], ["xReact"], k=2)
    assert json.loads(path.read_text())  # written
    second = EchoSource(disk_cache=path)
    assert second.infer(["I failed"], ["xReact"], k=2) == answer
    assert second.batches == []
    other_version = EchoSource(tag="v2", disk_cache=path)
    other_version.infer(["I failed"], ["xReact"], k=2)
    assert len(other_version.batches) == 1


def test_corrupt_disk_cache_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_text("{not json")
    assert EchoSource(disk_cache=path).infer(["x"], ["xReact"], k=1)[0]["xReact"] == ["x/xReact"]


def test_empty_head_and_string_arguments() -> None:
    src = EchoSource()
    assert src.infer(["  "], ["xReact"]) == [{"xReact": []}]
    with pytest.raises(TypeError):
        src.infer("I failed", ["xReact"])  # type: ignore[arg-type]


def test_factory_none_unknown_and_registered() -> None:
    none = load_knowledge_source({"type": "none"})
    assert isinstance(none, NoKnowledgeSource)
    assert none.infer(["x"], ["xReact", "xWant"]) == [{"xReact": [], "xWant": []}]
    with pytest.raises(ValueError, match="unknown knowledge source"):
        load_knowledge_source({"type": "conceptnet"})
    register_knowledge_source("echo", lambda **kw: EchoSource(**kw))
    assert isinstance(load_knowledge_source({"type": "echo", "tag": "t"}), EchoSource)


def test_wording_maps() -> None:
    assert atomic_to_user("PersonX fails PersonX's driving test") == "I fails my driving test"
    assert atomic_to_user("PersonY gives PersonX a gift") == "someone gives me a gift"
    assert atomic_to_user("PersonX pleases ___ to make") == "I pleases something to make"
    assert atomic_to_user("to see Person Y is hurt") == "to see someone is hurt"
    assert atomic_to_user("PersonZ's car") == "someone else's car"
    assert user_to_atomic("I lost my keys and they mocked me") == "PersonX lost PersonX's keys and they mocked PersonX"
    assert user_to_atomic("I'm sad") == "PersonX is sad"
    # tails: an explicit leading PersonX subject is dropped (ATOMIC's x-tails leave it implicit)
    assert atomic_tail_to_user("PersonX cries") == "cries"
    assert atomic_tail_to_user("PersonX's dog dies") == "my dog dies"
    assert atomic_tail_to_user("PersonY thanks PersonX") == "someone thanks me"


def test_missing_knowledge_files_degrade_to_no_knowledge_with_a_warning(tmp_path, caplog):
    from empathy_nlg.knowledge.base import NoKnowledgeSource, load_knowledge_source_or_none

    with caplog.at_level("WARNING"):
        source = load_knowledge_source_or_none({"type": "retrieval", "data_dir": str(tmp_path)}, "nec")
    assert isinstance(source, NoKnowledgeSource)
    assert "nec runs WITHOUT commonsense knowledge" in caplog.text and "EMPATHY_NLG_DATA" in caplog.text
    assert source.infer(["I lost my job"], ["xReact"]) == [{"xReact": []}]
