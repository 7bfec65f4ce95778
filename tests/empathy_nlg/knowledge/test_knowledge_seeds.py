"""IMAGINE and NEC helpers over a tiny source."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from typing import List, Sequence

import pytest

from empathy_nlg.knowledge.base import KnowledgeSource, load_knowledge_source
from empathy_nlg.knowledge.seeds import (
    NEC_KNOWLEDGE_PROMPT,
    EntityFact,
    extract_entities,
    imagine_knowledge,
    linearise_fact,
    nec_entity_knowledge,
    nec_knowledge_prompt,
    nec_social_knowledge,
    rank_entity_facts,
)
from empathy_nlg.taxonomy import IMAGINE_KNOWLEDGE_GROUPS, NEC_ENTITY_RELATIONS, NEC_SOCIAL_RELATIONS



class TableSource(KnowledgeSource):
    """Answers ``"{relation} of {head} #{i}"`` for six i, plus ``none``; records the heads asked."""

    name = "table"

    def __init__(self) -> None:
        super().__init__()
        self.heads: List[str] = []

    def _generate(self, queries: Sequence[tuple], k: int) -> List[List[str]]:
        self.heads += [h for h, _ in queries]
        return [["none"] + [f"{r} of {h} #{i}" for i in range(6)] for h, r in queries]


def test_imagine_groups_relations_five_each() -> None:
    out = imagine_knowledge(TableSource(), ["I failed my test"])
    assert list(out) == list(IMAGINE_KNOWLEDGE_GROUPS)
    for group, rels in IMAGINE_KNOWLEDGE_GROUPS.items():
        assert len(out[group]) == 5 * len(rels)
        assert out[group][0] == f"{rels[0]} of I failed my test #0"
    assert out["affect"] == [f"xReact of I failed my test #{i}" for i in range(5)]


def test_imagine_interleaves_several_causes_and_handles_none() -> None:
    out = imagine_knowledge(TableSource(), ["cause a", "cause b"], k=3)
    assert out["affect"] == ["xReact of cause a #0", "xReact of cause b #0", "xReact of cause a #1"]
    assert imagine_knowledge(TableSource(), []) == {g: [] for g in IMAGINE_KNOWLEDGE_GROUPS}


def test_nec_social_keeps_the_candidate_closest_to_context(sample_dir: Path, fake_encoder: Any) -> None:
    class Two(KnowledgeSource):
        name = "two"

        def _generate(self, queries, k):  # type: ignore[no-untyped-def]
            return [["to buy a boat", "to call the dog"] for _ in queries]

    out = nec_social_knowledge(Two(), "my dog ran away", ["I lost my dog", "my dog ran away"], fake_encoder)
    assert list(out) == list(NEC_SOCIAL_RELATIONS)
    assert set(out.values()) == {"to call the dog"}
    empty = nec_social_knowledge(load_knowledge_source({"type": "none"}), "hi", "hi", fake_encoder)
    assert empty == {r: "" for r in NEC_SOCIAL_RELATIONS}


def test_nec_entity_with_retrieval_and_spacy(sample_dir: Path, fake_encoder: Any) -> None:
    source = load_knowledge_source({"type": "retrieval", "data_dir": str(sample_dir), "top_heads": 1},
                                   encoder=fake_encoder)
    dialogue = ["I lost my keys at home.", "Oh no! Where did you last see them?"]
    facts = nec_entity_knowledge(source, dialogue, encoder=fake_encoder)
    assert all(isinstance(f, EntityFact) and f.relation in NEC_ENTITY_RELATIONS for f in facts)
    keys_facts = {(f.relation, f.tail) for f in facts if f.entity == "keys"}
    assert ("ObjectUse", "open the door") in keys_facts and ("AtLocation", "pocket") in keys_facts
    assert [f.score for f in facts] == sorted((f.score for f in facts), reverse=True)
    assert len(nec_entity_knowledge(source, dialogue, encoder=fake_encoder, top_n=2)) == 2


def test_nec_entity_uses_the_paper_template_for_generative_sources() -> None:
    src = TableSource()
    facts = nec_entity_knowledge(src, "My cake burned.", entities=["cake"], k=1)
    assert set(src.heads) == {"My cake burned. In this case, cake"}
    assert [(f.entity, f.relation) for f in facts] == [("cake", r) for r in NEC_ENTITY_RELATIONS]
    assert all(f.score == 0.0 for f in facts)  # no scorer, no encoder: unranked


def test_trained_scorer_hook() -> None:
    facts = [EntityFact("cake", "HasProperty", "sweet"), EntityFact("cake", "MadeUpOf", "flour")]
    ranked = rank_entity_facts("d", facts, lambda dialogue, fs: [0.1, 0.9])
    assert [f.tail for f in ranked] == ["flour", "sweet"] and ranked[0].score == pytest.approx(0.9)
    via = nec_entity_knowledge(TableSource(), "cake", entities=["cake"], k=1,
                               scorer=lambda d, fs: [float(i) for i in range(len(fs))], top_n=1)
    assert via[0].relation == NEC_ENTITY_RELATIONS[-1]
    with pytest.raises(ValueError):
        rank_entity_facts("d", facts, lambda d, fs: [1.0])


def test_linearise_and_prompt() -> None:
    fact = EntityFact("keys", "AtLocation", "pocket")
    assert linearise_fact(fact) == "keys, AtLocation, pocket"
    assert linearise_fact(("cake", "MadeUpOf", "flour")) == "cake, MadeUpOf, flour"
    assert nec_knowledge_prompt([fact]) == f"{NEC_KNOWLEDGE_PROMPT}\nkeys, AtLocation, pocket"
    assert nec_knowledge_prompt([]) == ""
    assert NEC_KNOWLEDGE_PROMPT == "The following knowledge facts are highly relevant to the left query:"


def test_spacy_entities() -> None:
    ents = extract_entities("I lost my keys at the train station and my phone died.")
    assert ents[:3] == ["keys", "train station", "phone"]
    assert extract_entities("I am so happy!") == []
