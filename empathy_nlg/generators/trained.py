"""Serving a trained generator: the one loop every paper generator shares.

A trained generator (``finetuned``, IMAGINE, NEC, and the papers still to come) serves a
:class:`~empathy_nlg.generators.conditioned.TrainedModel` from a folder. Everything but the
paper's own conditioning is the same for all of them and lives here:

* loading the model folder (default: the committed artefact), its version string, the decoding
  settings (:class:`~empathy_nlg.decoding.generation.DecodingConfig`, one set of defaults);
* batching, the seed, the conversation history bias (n-grams of the assistant's earlier replies
  get ``history_bias``, so decoding keeps away from what it already said), the grounding bias
  (the content words of the user's last ``grounding_turns`` messages get ``grounding_bias``, so
  the beams take up what the user said instead of the generic reply), the tone bias (to news
  perceived as good with probability ≥ ``tone_min_prob`` the sympathy words get ``tone_bias``,
  to bad news the celebration words), beam search with
  ``num_beams`` returns, reply clean-up, empty-candidate fallback, timing;
* the candidates handed to the engine's conversation reranker and perplexity scoring.

A paper implements only what is its own:

* :meth:`TrainedGenerator.inputs` — prefixes (its conditioning vectors), prompts, and the
  knowledge and details it reports per request;
* optionally :meth:`TrainedGenerator.choose` — its own choice among the beams (NEC's contrastive
  reranking), :meth:`candidates_per_request`, :meth:`configure` (its own options) and
  :meth:`version_suffix`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Type

from empathy_nlg.generators import conditioned as C
from empathy_nlg.generators.base import GenerationRequest, GenerationResult, Generator
from empathy_nlg.taxonomy import POLARITIES


@dataclass
class Inputs:
    """What a paper's conditioning produced for one batch of requests."""

    prefixes: Any                    # the model's prefix vectors (``None``: no prefix)
    prompts: List[List[int]]         # prompt token ids per request
    knowledge: List[Dict[str, List[str]]] = field(default_factory=list)  # reported per request
    details: List[Dict[str, Any]] = field(default_factory=list)          # reported per request
    #: the mean last-layer hidden state of each ``[prefix ; prompt]`` ([B, d]), filled in by the
    #: shared loop from the decoding pass when :attr:`TrainedGenerator.needs_context_vectors`
    context_vectors: Any = None
    #: an additive attention bias per request row over its ``[prefix ; prompt]`` positions, applied
    #: to the reply's queries (``ConditionedBackbone.biased``; ``None``: none — every paper but
    #: ``cause_gated``)
    attention_bias: Any = None


@dataclass
class Choice:
    """Which beam each request replies with, and the candidates the engine may rerank."""

    chosen: List[int]                          # index into the batch's flat list of beams
    candidates: List[List[Dict[str, Any]]]     # per request: ``{"text", "score", …}``, non-empty texts
    details: List[Dict[str, Any]] = field(default_factory=list)


class TrainedGenerator(Generator):
    """Serves ``model_class`` from ``model_dir`` (default :attr:`default_model_dir`)."""

    model_class: ClassVar[Type[C.TrainedModel]]
    default_model_dir: ClassVar[Path]
    #: whether :meth:`choose` reads ``inputs.context_vectors`` (taken from the decoding pass)
    needs_context_vectors: ClassVar[bool] = False

    def __init__(self, model_dir: Optional[str] = None, backbone_path: Optional[str] = None, device: Optional[str] = None,
                 dtype: str = "auto", decoding: Optional[Mapping[str, Any]] = None, num_beams: Optional[int] = None,
                 batch_size: int = 8, history_ngram: int = 3, history_bias: float = -4.0,
                 grounding_bias: float = 1.5, grounding_turns: int = 2, tone_bias: float = -5.0,
                 tone_min_prob: float = 0.55, merge_adapters: bool = True, serve_dtype: str = "auto",
                 attention: Optional[str] = None, **own: Any) -> None:
        from empathy_nlg.decoding.generation import DecodingConfig

        folder = Path(model_dir) if model_dir else self.default_model_dir
        self.decoding = asdict(DecodingConfig.from_mapping(decoding or {}))
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be ≥ 1, got {batch_size}")
        self.history_ngram, self.history_bias = int(history_ngram), float(history_bias)
        self.grounding_bias, self.grounding_turns = float(grounding_bias), int(grounding_turns)
        if self.grounding_turns < 0:
            raise ValueError(f"{self.name}: grounding_turns must be ≥ 0, got {grounding_turns}")
        self.tone_bias, self.tone_min_prob = float(tone_bias), float(tone_min_prob)
        self.model = self.model_class.load(folder, backbone_path=backbone_path, device=device, dtype=dtype)
        self.model.train(False)
        if merge_adapters:  # False: the adapters stay separate (the latency benchmark's baseline)
            self.model.lm.prepare_for_serving()
        # after the merge (done in the loaded precision): bf16 weights where the hardware has it
        self.serve_dtype = self.model.lm.cast_for_serving(serve_dtype)
        self.attention = self.model.lm.use_attention(attention)
        # the tone entries depend only on the polarity: tokenised once, not on every turn
        self._tone = {pol: C.tone_bias(self.model.lm.tokenizer, pol, bias=self.tone_bias) for pol in POLARITIES}
        self.settings = self.model.settings
        self.num_beams = int(num_beams or getattr(self.settings, "num_beams", 0) or self.decoding["num_beams"])
        self.configure(**own)
        config = C.read_trained_config(folder)
        self.version = f"{config.get('variant', self.name)}/{config.get('trained_at', 'untrained')}{self.version_suffix()}"

    # -- hooks -----------------------------------------------------------------------------------
    def configure(self, **own: Any) -> None:
        """The generator's own options (its config section's other keys); unknown ones are an error."""
        if own:
            raise TypeError(f"{self.name}: unknown options {sorted(own)}")

    def version_suffix(self) -> str:
        return ""

    def candidates_per_request(self) -> int:
        """How many beams each request returns (the reranker's candidates)."""
        return max(1, self.num_beams)

    def rows_per_request(self) -> int:
        """How many decoder rows :meth:`inputs` makes of each request (request-major; MIME: one
        per response-emotion draw). Each row returns ``candidates_per_request() // rows`` beams,
        so a request's candidates stay contiguous."""
        return 1

    def inputs(self, requests: Sequence[GenerationRequest]) -> Inputs:
        """The paper's conditioning for a batch (called under ``torch.inference_mode``)."""
        raise NotImplementedError

    def choose(self, inputs: Inputs, texts: Sequence[str], beam_scores, k: int) -> Choice:
        """Default: the top beam; every non-empty beam is a candidate scored by its log-probability."""
        n = len(texts) // k
        score = [float(beam_scores[j]) if beam_scores is not None else 0.0 for j in range(len(texts))]
        candidates = [[{"text": texts[j], "score": round(score[j], 4)} for j in range(i * k, (i + 1) * k) if texts[j]]
                      for i in range(n)]
        return Choice(chosen=[i * k for i in range(n)], candidates=candidates)

    # -- the shared loop -------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> List[GenerationResult]:
        import torch

        from empathy_nlg.decoding.generation import clean_reply

        results: List[GenerationResult] = []
        k = self.candidates_per_request()
        per_row = max(1, k // self.rows_per_request())
        # every request steers its own rows of the batch (its user's words and news, its
        # conversation's earlier replies); sampling decodes one request at a time
        sampling = bool(self.decoding.get("do_sample"))
        size = 1 if sampling else self.batch_size
        for start in range(0, len(requests), size):
            chunk = list(requests[start : start + size])
            t0 = time.perf_counter()
            with torch.inference_mode():
                inputs = self.inputs(chunk)
                t_inputs = time.perf_counter()
                torch.manual_seed(int(self.decoding.get("seed", 13)))
                rows = [bias for r in chunk for bias in [self.bias_of(r)] * self.rows_per_request()]
                states: Optional[List[Any]] = [] if (self.needs_context_vectors and k > 1) else None
                gated = {} if inputs.attention_bias is None else {"attention_bias": inputs.attention_bias}
                t_bias = time.perf_counter()
                if sampling:
                    ids, beam_scores = self.model.lm.generate(inputs.prefixes, inputs.prompts, self.decoding, num_return=per_row,
                                                              sequence_bias=rows[0], context_out=states, **gated)
                else:
                    ids, beam_scores = self.model.lm.generate(inputs.prefixes, inputs.prompts, self.decoding, num_return=per_row,
                                                              row_bias=rows, context_out=states, **gated)
                t_decode = time.perf_counter()
                if states:
                    inputs.context_vectors = states[0]
                raw = [self.model.lm.decode(i) for i in ids]
                texts = [clean_reply(r) for r in raw]
                choice = self.choose(inputs, texts, beam_scores, k)
            t_end = time.perf_counter()
            seconds = round((t_end - t0) / len(chunk), 3)
            # per request (a batch shares its passes): conditioning (the paper's inputs, knowledge
            # included), the steering biases, decoding, and choosing among the beams
            timing = {"inputs": (t_inputs - t0), "bias": (t_bias - t_inputs), "decode": (t_decode - t_bias),
                      "choose": (t_end - t_decode)}
            timing = {stage: round(1000 * v / len(chunk), 1) for stage, v in timing.items()}
            for i, _request in enumerate(chunk):
                j = choice.chosen[i]
                if not texts[j]:  # the chosen beam was empty after clean-up: the first non-empty one
                    j = next((b for b in range(i * k, (i + 1) * k) if texts[b]), j)
                details = dict(inputs.details[i]) if inputs.details else {}
                details.update(choice.details[i] if choice.details else {})
                details.update(raw=raw[j], beams=k, seconds=seconds, timing=timing)
                results.append(GenerationResult(
                    text=texts[j], generator=self.name, version=self.version,
                    knowledge=inputs.knowledge[i] if inputs.knowledge else dict(chunk[i].knowledge),
                    details=details, candidates=choice.candidates[i]))
        return results

    def bias_of(self, request: GenerationRequest) -> List[List[Any]]:
        """All of a request's bias entries: its steering, then its conversation's history (after
        the others: where both name the same tokens, keeping away from what was said wins)."""
        return self.steering(request) + C.history_bias(self.model.lm.tokenizer, list(request.earlier_replies),
                                                       n=self.history_ngram, bias=self.history_bias)

    def steering(self, request: GenerationRequest) -> List[List[Any]]:
        """The request's own bias entries: grounding (its user's last messages, newest first), then
        tone (by perception's polarity, when confident enough); tone wins on a shared token."""
        said = [u.text for u in reversed(request.context) if u.role == "speaker"][: self.grounding_turns]
        entries = C.grounding_bias(self.model.lm.tokenizer, said, bias=self.grounding_bias)
        p = request.perception
        if p is not None and p.polarity_prob >= self.tone_min_prob:
            entries += self._tone.get(p.polarity, [])
        return entries

    def score(self, requests: Sequence[GenerationRequest], references: Sequence[str]) -> Optional[Dict[str, float]]:
        import torch

        with torch.inference_mode():
            inputs = self.inputs(requests)
            tok = self.model.lm.tokenizer
            replies = [C.encode_reply(tok, ref, 10_000, self.model.lm.is_seq2seq) for ref in references]
            gated = {} if inputs.attention_bias is None else {"attention_bias": inputs.attention_bias}
            nll, tokens = self.model.lm.reply_nll(inputs.prefixes, inputs.prompts, replies, **gated)
        return {"nll": nll, "tokens": tokens, "tokenizer": f"{self.model.backbone_name} (BPE)"}
