"""Retrieval over a tiny ATOMIC-format sample written by the test (fake encoder; no shared data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from empathy_nlg.knowledge.base import load_knowledge_source
from empathy_nlg.knowledge.retrieval import RetrievalKnowledgeSource, build_index



def make_source(sample_dir: Path, encoder: Any, **kw: object) -> Any:
    return load_knowledge_source({"type": "retrieval", "data_dir": str(sample_dir), **kw}, encoder=encoder)  # type: ignore[return-value]


def test_near_identical_head_gets_its_tails(sample_dir: Path, fake_encoder: Any) -> None:
    src = make_source(sample_dir, fake_encoder, top_heads=1)
    out = src.infer(["I failed my driving test"], ["xReact", "xWant"], k=5)[0]
    # gold tails first, then COMET-BART generations of the same row; "none" and duplicates dropped
    assert out["xReact"] == ["sad", "disappointed", "upset"]
    assert out["xWant"] == ["to try again", "to practice driving"]


def test_personx_heads_and_tails_are_mapped(sample_dir: Path, fake_encoder: Any) -> None:
    src = make_source(sample_dir, fake_encoder, top_heads=1)
    # an ATOMIC-style query works too, and PersonX/PersonY in tails come back in user wording
    out = src.infer(["PersonX fails PersonX's driving test"], ["oReact", "xIntent"], k=5)[0]
    assert out["oReact"] == ["someone feels sorry for me"]
    assert out["xIntent"] == ["to make someone happy", "to celebrate"]  # the only xIntent row


def test_none_is_filtered_and_all_none_rows_give_nothing(sample_dir: Path, fake_encoder: Any) -> None:
    src = make_source(sample_dir, fake_encoder, top_heads=1)
    out = src.infer(["I walk the dog", "I forget the test"], ["xEffect", "xNeed"], k=5)
    assert out[0]["xEffect"] == ["gets exercise"]
    assert all("none" not in [t.lower() for t in tails] for o in out for tails in o.values())


def test_vote_prefers_tails_similar_heads_agree_on(sample_dir: Path, fake_encoder: Any) -> None:
    nearest = make_source(sample_dir, fake_encoder, top_heads=3, scoring="nearest")
    vote = make_source(sample_dir, fake_encoder, top_heads=3, scoring="vote")
    assert nearest.version != vote.version
    # "sad" is both a gold tail and a COMET-BART beam of the nearest row: voting puts it first
    assert vote.infer(["I failed my driving test"], ["xReact"])[0]["xReact"][0] == "sad"
    with pytest.raises(ValueError, match="scoring"):
        make_source(sample_dir, fake_encoder, scoring="magic")


def test_pooling_neighbours_and_unknown_relation(sample_dir: Path, fake_encoder: Any) -> None:
    src = make_source(sample_dir, fake_encoder, top_heads=3)
    out = src.infer(["I won the lottery"], ["xReact", "isAfter"], k=4)[0]
    assert out["xReact"][:3] == ["happy", "excited", "rich"]
    assert len(out["xReact"]) == 4  # topped up from the next-nearest head
    assert out["isAfter"] == []
    assert src.infer(["I won the lottery"], ["xReact"], k=2)[0]["xReact"] == ["happy", "excited"]


def test_gold_only_and_min_similarity(sample_dir: Path, fake_encoder: Any) -> None:
    gold_only = make_source(sample_dir, fake_encoder, top_heads=1, use_generations=False)
    assert gold_only.infer(["I failed my driving test"], ["xReact"])[0]["xReact"] == ["sad", "disappointed"]
    strict = make_source(sample_dir, fake_encoder, min_similarity=0.99)
    assert strict.infer(["quantum chromodynamics"], ["xReact"])[0]["xReact"] == []


def test_index_is_cached_once(sample_dir: Path, tmp_path: Path, encoder_factory: Any) -> None:
    encoder = encoder_factory()
    first = build_index(sample_dir, encoder, cache_root=tmp_path / "c")
    assert encoder.calls == [len(first.heads)]
    second = build_index(sample_dir, encoder, cache_root=tmp_path / "c")
    assert encoder.calls == [len(first.heads)]  # loaded, not re-encoded
    assert second.key == first.key and (second.embeddings == first.embeddings).all()
    assert list((tmp_path / "c" / "knowledge").glob("atomic-index-*/embeddings.npy"))


def test_without_generations_file(tmp_path: Path, fake_encoder: Any, sample_writer: Any) -> None:
    root = sample_writer(tmp_path / "d", with_generations=False)
    src = make_source(root, fake_encoder, top_heads=1)
    assert src.infer(["I failed my driving test"], ["xReact"])[0]["xReact"] == ["sad", "disappointed"]


def test_missing_data_is_a_clear_error(tmp_path: Path, fake_encoder: Any) -> None:
    with pytest.raises(FileNotFoundError, match=r"--data-dir.*EMPATHY_NLG_DATA"):
        make_source(tmp_path / "empty", fake_encoder)
    with pytest.raises(FileNotFoundError, match="EMPATHY_NLG_DATA"):
        load_knowledge_source({"type": "retrieval"}, encoder=fake_encoder)  # default dir (set empty by conftest)


@pytest.mark.slow
def test_real_minilm_maps_first_person_to_personx(sample_dir: Path) -> None:
    """With the real shared MiniLM, a paraphrased first-person event finds the PersonX head."""
    from empathy_nlg.knowledge.retrieval import load_default_encoder

    try:
        encoder = load_default_encoder(device="cpu")
    except FileNotFoundError as exc:  # pragma: no cover - encoder package missing
        pytest.skip(str(exc))
    src = make_source(sample_dir, encoder, top_heads=1)
    out = src.infer(["I didn't pass my driving exam", "I misplaced my keys"], ["xReact", "xNeed"], k=3)
    assert out[0]["xReact"][0] == "sad"
    assert out[1]["xNeed"] == ["to have keys"]


def test_temperature_sharpens_votes(sample_dir: Path, fake_encoder: Any) -> None:
    sharp = make_source(sample_dir, fake_encoder, top_heads=3, temperature=0.01)
    assert "-t0.01" in sharp.version
    # with a very sharp weighting the nearest head's tails outrank everything else
    assert sharp.infer(["I won the lottery"], ["xReact"], k=3)[0]["xReact"] == ["happy", "excited", "rich"]


def test_entity_relations_need_a_similar_entity(sample_dir: Path, fake_encoder: Any) -> None:
    src = make_source(sample_dir, fake_encoder)
    assert src.infer(["dog"], ["AtLocation", "CapableOf"])[0] == {"AtLocation": [], "CapableOf": ["bark"]}
    no_floor = make_source(sample_dir, fake_encoder, relation_min_similarity={})
    assert no_floor.infer(["dog"], ["AtLocation"])[0]["AtLocation"]  # someone else's location
    assert no_floor.version != src.version
