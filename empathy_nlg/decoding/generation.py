"""How every generator decodes: one set of decoding defaults and one reply clean-up.

:class:`DecodingConfig` is read from a generator's ``decoding`` section (``engine.yml``); the
trained generators pass it to :meth:`ConditionedBackbone.generate`, which falls back to the same
defaults (:func:`generate_kwargs`) for the decoding it does during training (NEC's online y′
negatives) — so a model is trained against replies decoded the way it serves.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping

from empathy_nlg.settings import settings_from_mapping
from empathy_nlg.text import split_sentences


@dataclass
class DecodingConfig:
    max_new_tokens: int = 30
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 3
    #: beam search: stop as soon as ``num_beams`` replies are complete (``False``: transformers'
    #: default heuristic, which keeps going while a running beam's length-normalised score is
    #: better than the worst complete one)
    early_stopping: bool = False
    seed: int = 13

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "DecodingConfig":
        return settings_from_mapping(cls, values, "decoding")



def generate_kwargs(decoding: Mapping[str, Any]) -> Dict[str, Any]:
    """``decoding`` completed with the defaults of :class:`DecodingConfig` (an unknown key is an error)."""
    return asdict(DecodingConfig.from_mapping(decoding))


def clean_reply(text: str) -> str:
    """Strip, keep complete sentences (drop a cut-off tail when a full sentence precedes it)."""
    text = " ".join(text.replace("<|im_end|>", " ").split())
    if not text:
        return ""
    sentences = split_sentences(text)
    if len(sentences) > 1 and not re.search(r"[.!?]['\")]?$", sentences[-1]):
        sentences = sentences[:-1]
    return " ".join(sentences).strip()
