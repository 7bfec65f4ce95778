"""Commonsense knowledge (experience projection): COMET checkpoints or the offline ATOMIC default.

Entry points (importing this package loads neither torch nor a model):

* :func:`load_knowledge_source` — ``{"type": "retrieval" | "comet" | "none", ...}`` → a
  :class:`KnowledgeSource` with ``infer(heads, relations, k)``
* :func:`imagine_knowledge`, :func:`nec_social_knowledge`, :func:`nec_entity_knowledge`,
  :func:`nec_knowledge_prompt` — knowledge shaped the way the IMAGINE and NEC generators use it

See ``docs/knowledge.md``.
"""

from empathy_nlg.knowledge.base import (
    KnowledgeSource,
    NoKnowledgeSource,
    available_knowledge_sources,
    load_knowledge_source,
    register_knowledge_source,
)
from empathy_nlg.knowledge.seeds import (
    NEC_KNOWLEDGE_PROMPT,
    CosineFactScorer,
    EntityFact,
    imagine_knowledge,
    linearise_fact,
    nec_entity_knowledge,
    nec_knowledge_prompt,
    nec_social_knowledge,
    rank_entity_facts,
)

__all__ = [
    "KnowledgeSource", "NoKnowledgeSource", "available_knowledge_sources", "load_knowledge_source",
    "register_knowledge_source", "NEC_KNOWLEDGE_PROMPT", "CosineFactScorer", "EntityFact",
    "imagine_knowledge", "linearise_fact", "nec_entity_knowledge", "nec_knowledge_prompt",
    "nec_social_knowledge", "rank_entity_facts",
]
