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
from dataclasses import dataclass
from typing import Any, ClassVar, List, Mapping, Optional, Sequence

from empathy_nlg.datasets import Utterance
from empathy_nlg.generators import conditioned as C
from empathy_nlg.generators.base import GenerationRequest
from empathy_nlg.generators.trained import Inputs, TrainedGenerator
from empathy_nlg.paths import ARTIFACTS_DIR

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = ARTIFACTS_DIR / "generators" / "finetuned"
VERSION = "finetuned-v1"


@dataclass
class FinetunedSettings(C.TrainedSettings):
    NAME: ClassVar[str] = "finetuned"

    num_beams: int = 4


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


class FinetunedGenerator(TrainedGenerator):
    """Serves a trained ``finetuned`` model (``model_dir``; default: the committed one): the shared
    loop of :class:`~empathy_nlg.generators.trained.TrainedGenerator` with the plain prompt."""

    name = "finetuned"
    needs_perception = False
    model_class = FinetunedModel
    default_model_dir = DEFAULT_MODEL_DIR

    def inputs(self, requests: Sequence[GenerationRequest]) -> Inputs:
        return Inputs(prefixes=self.model.prefixes(len(requests)), prompts=self.model.prompts([r.context for r in requests]))


class FinetunedRecipe(C.TrainingRecipe):
    model_class = FinetunedModel
    #: the silver communication-mechanism labels are not used: skip them when building features
    NEEDS_CM = False


RECIPE = FinetunedRecipe()
