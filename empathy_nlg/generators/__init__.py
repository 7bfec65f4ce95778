"""Response generators: one module per paper behind :class:`Generator`, chosen by name."""

from empathy_nlg.generators.base import (
    GenerationRequest,
    GenerationResult,
    Generator,
    available_generators,
    create_generator,
    generator_class,
    register_generator,
)

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "available_generators",
    "create_generator",
    "generator_class",
    "register_generator",
]
