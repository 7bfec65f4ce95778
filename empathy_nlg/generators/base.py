"""The one interface every response generator implements, and the name registry.

A generator turns a :class:`GenerationRequest` (the dialogue so far, what perception found, the
knowledge retrieved and the stored emotion trajectory) into a reply. Each paper lives in its own
module behind this interface (today ``imagine`` and ``nec``; the trained ones share
:class:`empathy_nlg.generators.conditioned.TrainedModel` for training and
:class:`empathy_nlg.generators.trained.TrainedGenerator` for serving), next to the ``finetuned`` backbone, the
untrained ``prompted`` one and the ``frequent`` baseline, and is registered by name; the engine
and the evaluation harness only ever see names.

Registration is lazy (:class:`empathy_nlg.registry.Registry`): built-in names map to
``"module:Class"`` so that importing the registry does not import torch or load a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Type

from empathy_nlg.datasets import Utterance
from empathy_nlg.perception.types import Perception
from empathy_nlg.registry import Registry


@dataclass
class GenerationRequest:
    """Everything a generator may condition on.

    ``context`` holds the dialogue so far, oldest first, ending with the user's (speaker's) turn;
    roles are ``speaker`` (the user) and ``listener`` (the assistant), as in ED.
    """

    context: List[Utterance]
    perception: Optional[Perception] = None
    knowledge: Dict[str, List[str]] = field(default_factory=dict)
    emotion_trajectory: List[str] = field(default_factory=list)  # earlier turns' emotions, oldest first
    #: what the user said about themselves (the ``persona`` slot, remembered in SQL): the prompted
    #: generator puts it in its instruction, ``persona_moel`` encodes its sentences into a persona
    #: vector; the other trained ones (finetuned, IMAGINE, NEC, MIME, cause_gated) were trained
    #: without persona and do not use it
    persona: Optional[str] = None
    #: the assistant's earlier replies in this conversation, oldest first: decoding keeps away from them
    earlier_replies: List[str] = field(default_factory=list)


@dataclass
class GenerationResult:
    text: str
    generator: str
    version: str
    knowledge: Dict[str, List[str]] = field(default_factory=dict)
    details: Dict[str, Any] = field(default_factory=dict)
    #: every reply the generator considered (``text``, ``score``: its own preference, higher is
    #: better), ``text`` among them; the engine's conversation reranker chooses among these
    candidates: List[Dict[str, Any]] = field(default_factory=list)


class Generator(ABC):
    """Base class of all generators. Subclasses set ``name`` and ``version``."""

    name: str = "base"
    version: str = "0"
    #: whether :meth:`needs_perception` callers must run perception before generating
    needs_perception: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Generator":
        """Build the generator from its section of the engine config."""
        return cls(**dict(config))  # type: ignore[call-arg]

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> List[GenerationResult]:
        """Reply to each request (a batch; deterministic for a fixed seed and config)."""

    def score(self, requests: Sequence[GenerationRequest], references: Sequence[str]) -> Optional[Dict[str, float]]:
        """Total negative log-likelihood and token count of ``references`` given the requests.

        Returns ``{"nll": float, "tokens": int, "tokenizer": str}`` or ``None`` when the generator
        cannot score text (then the harness reports no perplexity).
        """
        return None

    def fit(self, texts: Sequence[str]) -> None:  # pragma: no cover - optional hook
        """Optional: learn from training replies (used by trivial baselines)."""


GENERATORS: Registry[Type[Generator]] = Registry("generator", {
    "prompted": "empathy_nlg.generators.prompted:PromptedBackboneGenerator",
    "frequent": "empathy_nlg.generators.frequent:MostFrequentReplyGenerator",
    "finetuned": "empathy_nlg.generators.finetuned:FinetunedGenerator",
    "imagine": "empathy_nlg.generators.imagine:ImagineGenerator",
    "nec": "empathy_nlg.generators.nec:NecGenerator",
    "mime": "empathy_nlg.generators.mime:MimeGenerator",
    "cause_gated": "empathy_nlg.generators.cause_gated:CauseGatedGenerator",
    "persona_moel": "empathy_nlg.generators.persona_moel:PersonaMoelGenerator",
})


def register_generator(name: str) -> Callable[[Type[Generator]], Type[Generator]]:
    """Class decorator: make a generator available under ``name``."""

    def name_it(cls: Type[Generator]) -> None:
        cls.name = name

    return GENERATORS.decorator(name, name_it)


def available_generators() -> List[str]:
    return GENERATORS.names()


def generator_class(name: str) -> Type[Generator]:
    return GENERATORS.get(name)


def create_generator(name: str, config: Optional[Mapping[str, Any]] = None) -> Generator:
    """Instantiate the generator registered as ``name`` with its config section."""
    return generator_class(name).from_config(config or {})
