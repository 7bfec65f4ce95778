"""The backbone fine-tuned on EmpatheticDialogues with the plain dialogue prompt (``finetuned``).

No paper conditioning: LoRA adapters on the frozen backbone, trained with the token NLL of the
gold listener replies given the system line and the last ``context_turns`` utterances. It is

* the *fine-tuned LM* baseline the papers compare against (a generator of its own, served and
  evaluated by name), and
* the **starting adapter of the paper generators**: ``init_adapter: <this model's folder>`` in a
  NEC or IMAGINE training config starts their LoRA from it, so the expensive part — learning
  to talk like an ED listener, on all of ED train — is done once, with the fast path
  (``lora.top_layers``: nothing trainable below the top layers, so a step runs the lower layers
  forward only; bf16 autocast; the LM head only on reply positions; length-bucketed batches), and
  each paper then trains only its own conditioning on top.

Serving: beam search (``num_beams`` returns); the beams are the candidates the engine's
conversation reranker chooses among (their length-normalised log-probabilities are the scores).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from empathy_nlg.datasets import Utterance
from empathy_nlg.generators import conditioned as C
from empathy_nlg.generators.base import GenerationRequest, GenerationResult, Generator, settings_from_mapping
from empathy_nlg.paths import ARTIFACTS_DIR

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = ARTIFACTS_DIR / "generators" / "finetuned"
VERSION = "finetuned-v1"


@dataclass
class FinetunedSettings:
    context_turns: int = 2
    max_prompt_tokens: int = 128
    max_reply_tokens: int = 32
    num_beams: int = 4

    @classmethod
    def from_mapping(cls, values: Optional[Mapping[str, Any]]) -> "FinetunedSettings":
        return settings_from_mapping(cls, values, "finetuned")

    @property
    def variant(self) -> str:
        return "finetuned"


class FinetunedModel(C.TrainedModel):
    """Backbone + LoRA adapters, no heads of its own."""

    name = "finetuned"
    version = VERSION
    settings_type = FinetunedSettings
    needs_encoder = False

    def prompts(self, contexts: Sequence[Sequence[Utterance]]) -> List[List[int]]:
        s = self.settings
        return [C.encode_prompt(self.lm.tokenizer, C.prompt_messages(c, s.context_turns), s.max_prompt_tokens) for c in contexts]

    def prefixes(self, n: int):
        import torch

        return [torch.zeros(0, self.lm.hidden_size, device=self.device) for _ in range(n)]

    def _teacher_forced(self, batch: Sequence[Mapping[str, Any]]):
        contexts = [[Utterance(r, t) for r, t in f["context"]] for f in batch]
        replies = [C.encode_reply(self.lm.tokenizer, f["reference"], self.settings.max_reply_tokens, self.lm.is_seq2seq)
                   for f in batch]
        logits, targets, _ = self.lm.forward(self.prefixes(len(batch)), self.prompts(contexts), replies)
        return logits, targets

    def reply_nll(self, batch: Sequence[Mapping[str, Any]]):
        return C.summed_nll(*self._teacher_forced(batch))

    def loss(self, batch: Sequence[Mapping[str, Any]], step: int = 0):
        nll = C.token_nll(*self._teacher_forced(batch))
        return nll, {"gen": float(nll.detach())}


class FinetunedGenerator(Generator):
    """Serves a trained ``finetuned`` model (``model_dir``; default: the committed one)."""

    name = "finetuned"
    needs_perception = False

    def __init__(self, model_dir: Optional[str] = None, backbone_path: Optional[str] = None, device: Optional[str] = None,
                 dtype: str = "auto", decoding: Optional[Mapping[str, Any]] = None, num_beams: Optional[int] = None,
                 batch_size: int = 8, history_ngram: int = 3, history_bias: float = -4.0) -> None:
        from empathy_nlg.decoding.generation import DecodingConfig

        folder = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
        self.decoding = asdict(DecodingConfig.from_mapping(decoding or {}))
        self.model = FinetunedModel.load(folder, backbone_path=backbone_path, device=device, dtype=dtype)
        self.settings = self.model.settings
        self.num_beams = int(num_beams or self.settings.num_beams)
        self.batch_size = int(batch_size)
        self.history_ngram, self.history_bias = int(history_ngram), float(history_bias)
        config = C.read_trained_config(folder)
        self.version = f"{config.get('variant', 'finetuned')}/{config.get('trained_at', 'untrained')}"

    def generate(self, requests: Sequence[GenerationRequest]) -> List[GenerationResult]:
        import torch

        from empathy_nlg.decoding.generation import clean_reply

        results: List[GenerationResult] = []
        k = max(1, self.num_beams)
        for start in range(0, len(requests), self.batch_size):
            chunk = list(requests[start : start + self.batch_size])
            t0 = time.perf_counter()
            with torch.inference_mode():
                prompts = self.model.prompts([r.context for r in chunk])
                torch.manual_seed(int(self.decoding.get("seed", 13)))
                bias = C.history_bias(self.model.lm.tokenizer, [t for r in chunk for t in r.earlier_replies],
                                      n=self.history_ngram, bias=self.history_bias)
                ids, scores = self.model.lm.generate(self.model.prefixes(len(chunk)), prompts, self.decoding,
                                                     num_return=k, sequence_bias=bias)
            texts = [clean_reply(self.model.lm.decode(i)) for i in ids]
            seconds = (time.perf_counter() - t0) / len(chunk)
            for i, r in enumerate(chunk):
                block = texts[i * k : (i + 1) * k]
                block_scores = [float(scores[i * k + j]) if scores is not None else 0.0 for j in range(k)]
                candidates = [{"text": t, "score": round(sc, 4)} for t, sc in zip(block, block_scores) if t]
                text = candidates[0]["text"] if candidates else ""
                results.append(GenerationResult(text=text, generator=self.name, version=self.version,
                                                knowledge=dict(r.knowledge), candidates=candidates,
                                                details={"seconds": round(seconds, 3), "beams": k}))
        return results

    def score(self, requests: Sequence[GenerationRequest], references: Sequence[str]) -> Optional[Dict[str, float]]:
        import torch

        with torch.inference_mode():
            prompts = self.model.prompts([r.context for r in requests])
            replies = [C.encode_reply(self.model.lm.tokenizer, ref, 10_000, self.model.lm.is_seq2seq) for ref in references]
            nll, tokens = self.model.lm.reply_nll(self.model.prefixes(len(requests)), prompts, replies)
        return {"nll": nll, "tokens": tokens, "tokenizer": f"{self.model.backbone_name} (BPE)"}


class FinetunedRecipe(C.TrainingRecipe):
    model_class = FinetunedModel
    #: the silver communication-mechanism labels are not used: skip them when building features
    NEEDS_CM = False


RECIPE = FinetunedRecipe()
