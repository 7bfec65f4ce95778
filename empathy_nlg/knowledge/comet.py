"""COMET-ATOMIC-2020 (BART) from a local checkpoint folder.

For users who have the released ``comet-atomic_2020_BART`` model (Hwang et al. 2021): a folder
with ``config.json``, the weights and the tokenizer files (the release adds the relation names
and ``[GEN]`` to the tokenizer). Nothing is downloaded: loading is ``local_files_only``.

Querying follows the release's ``generation_example.py``: the input is
``"{head} {relation} [GEN]"``, decoded with beam search (5 beams, 5 returned sequences), in
batches (the release used batch size 1; padding does not change a BART encoder's outputs). Like
the release, the checkpoint's ``task_specific_params["summarization"]`` decoding settings
(``no_repeat_ngram_size``, ``length_penalty``, ``min_length``, ``max_length``, ``early_stopping``)
are applied when present; ``max_new_tokens`` given explicitly wins over ``max_length``. IMAGINE and
NEC both use COMET this way (five inferences per relation).

Adaptation: COMET was trained on ``PersonX`` heads, users write in the first person; with
``personx_queries`` (default on) "I lost my keys" is sent as "PersonX lost PersonX's keys", and
``PersonX``/``PersonY`` in the answers are rewritten into the user's wording ("PersonY helps
PersonX" → "someone helps me"; verbs are not re-inflected), see
:func:`~empathy_nlg.knowledge.atomic.atomic_to_user`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

from empathy_nlg.knowledge.atomic import TAIL_MAPPING_VERSION, atomic_tail_to_user, user_to_atomic
from empathy_nlg.knowledge.base import KnowledgeSource, Query

log = logging.getLogger(__name__)

GEN_TOKEN = "[GEN]"


def format_comet_query(head: str, relation: str) -> str:
    """The COMET-ATOMIC-2020 BART input for one query."""
    return f"{head} {relation} {GEN_TOKEN}"


class CometKnowledgeSource(KnowledgeSource):
    """A COMET BART checkpoint, loaded from ``path`` on the device picked at run time."""

    name = "comet"

    def __init__(
        self,
        path: Path | str,
        device: Optional[str] = None,
        batch_size: int = 16,
        num_beams: int = 5,
        num_return_sequences: int = 5,
        max_new_tokens: Optional[int] = None,
        personx_queries: bool = True,
        task_params: Optional[str] = "summarization",
        cache_size: int = 4096,
        disk_cache: Optional[Path | str] = None,
    ) -> None:
        super().__init__(cache_size=cache_size, disk_cache=disk_cache)
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from empathy_nlg.perception.encoder import pick_device

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(
                f"no COMET checkpoint at {self.path} (expected config.json, weights and tokenizer "
                "files); set knowledge.path in the engine config or pass --comet-path DIR"
            )
        self.device = pick_device(device)
        self.batch_size = int(batch_size)
        self.num_beams = int(num_beams)
        self.num_return_sequences = min(int(num_return_sequences), self.num_beams)
        self.personx_queries = bool(personx_queries)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(str(self.path), local_files_only=True)
        self.model.to(self.device).eval()
        self.generation_kwargs = self._decoding_settings(task_params, max_new_tokens)
        self._torch = torch
        digest = hashlib.sha256((self.path / "config.json").read_bytes())
        for weights in ("model.safetensors", "pytorch_model.bin"):
            p = self.path / weights
            if p.is_file():
                digest.update(f"{weights}:{p.stat().st_size}:{int(p.stat().st_mtime)}".encode())
        settings = ",".join(f"{key}={value}" for key, value in sorted(self.generation_kwargs.items()))
        self._version = (
            f"comet-{digest.hexdigest()[:12]}-"
            f"{hashlib.sha256(settings.encode()).hexdigest()[:8]}-px{int(self.personx_queries)}-tm{TAIL_MAPPING_VERSION}"
        )
        log.info("COMET checkpoint %s on %s", self.path, self.device)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **objects: Any) -> "CometKnowledgeSource":
        config = dict(config)
        if "path" not in config:
            raise ValueError("a comet knowledge source needs 'path': the local checkpoint folder")
        return cls(**config)

    def _decoding_settings(self, task_params: Optional[str], max_new_tokens: Optional[int]) -> dict:
        """Beam search settings: the release's task-specific params, then ours."""
        kwargs: dict = {"early_stopping": True}
        specific = getattr(self.model.config, "task_specific_params", None) or {}
        if task_params and isinstance(specific.get(task_params), dict):
            for key in ("early_stopping", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size"):
                if key in specific[task_params]:
                    kwargs[key] = specific[task_params][key]
        if max_new_tokens is not None or "max_length" not in kwargs:
            kwargs.pop("max_length", None)
            kwargs["max_new_tokens"] = int(max_new_tokens or 24)
        kwargs.update(num_beams=self.num_beams, num_return_sequences=self.num_return_sequences, do_sample=False)
        return kwargs

    @property
    def version(self) -> str:
        return self._version

    def _generate(self, queries: Sequence[Query], k: int) -> List[List[str]]:
        torch = self._torch
        texts = [
            format_comet_query(user_to_atomic(h) if self.personx_queries else h, r) for h, r in queries
        ]
        n_ret = self.num_return_sequences
        out: List[List[str]] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            batch = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=64)
            batch = {key: v.to(self.device) for key, v in batch.items() if key in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                generated = self.model.generate(**batch, **self.generation_kwargs)
            decoded = self.tokenizer.batch_decode(
                generated, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            for i in range(len(chunk)):
                outs = decoded[i * n_ret : (i + 1) * n_ret]
                out.append([atomic_tail_to_user(t.strip()) for t in outs])
        return out
