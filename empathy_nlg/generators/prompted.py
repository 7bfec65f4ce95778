"""The default generator: the pretrained backbone, prompted with what perception found.

No training: SmolLM2-135M-Instruct (or any local chat/causal checkpoint) receives

* a system instruction built from the perceived emotion, the cause utterance (when it is an
  earlier turn than the last one), the stored emotion trajectory and the communication-mechanism
  plan (ER → react to the feeling, IP → show understanding of the situation, EX → ask a question);
* two short hand-written demonstration exchanges (one negative, one positive; our own text);
* the dialogue so far as chat turns.

Greedy decoding by default (deterministic), at most ``max_new_tokens``; the reply is trimmed to
its complete sentences. ``score`` gives the reference's negative log-likelihood under the same
prompt, so the evaluation harness can report perplexity.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

from empathy_nlg.decoding.generation import DecodingConfig, clean_reply
from empathy_nlg.generators.base import GenerationRequest, GenerationResult, Generator

log = logging.getLogger(__name__)

CM_INSTRUCTIONS: Dict[str, str] = {
    "ER": "Respond warmly to how they feel.",
    "IP": "Show that you understand what they went through.",
    "EX": "Ask one gentle question to learn more.",
}

DEMONSTRATIONS: List[Dict[str, str]] = [
    {"role": "user", "content": "My car broke down on the way to my job interview."},
    {"role": "assistant", "content": "Oh no, that is such bad timing. Were you able to let them know what happened?"},
    {"role": "user", "content": "I finally finished my first marathon today!"},
    {"role": "assistant", "content": "That's amazing, congratulations! How do you feel now that you crossed the finish line?"},
]


def build_system_prompt(request: GenerationRequest) -> str:
    parts = ["You are a kind friend who listens. Answer in one or two short sentences."]
    p = request.perception
    if p is not None:
        parts.append(f"The user seems {p.emotion}.")
        last_index = len(request.context) - 1
        earlier = [c for c in p.causes if c.index != last_index and c.text]
        if earlier:
            parts.append(f'This is about what they said before: "{earlier[0].text}"')
        parts.extend(CM_INSTRUCTIONS[c] for c in p.cm_plan)
    if request.emotion_trajectory:
        recent = [e for e in request.emotion_trajectory[-3:] if e]
        if recent and (p is None or recent[-1] != p.emotion):
            parts.append(f"Earlier in this conversation they felt {', then '.join(recent)}.")
    if request.persona:
        parts.append(f"About the user: {request.persona}")
    return " ".join(parts)


def build_messages(request: GenerationRequest) -> List[Dict[str, str]]:
    messages = [{"role": "system", "content": build_system_prompt(request)}, *DEMONSTRATIONS]
    for u in request.context:
        messages.append({"role": "user" if u.role == "speaker" else "assistant", "content": u.text})
    return messages


class PromptedBackboneGenerator(Generator):
    name = "prompted"
    needs_perception = True

    def __init__(
        self,
        backbone_path: Optional[str] = None,
        adapter: Optional[str] = None,
        device: Optional[str] = None,
        dtype: str = "auto",
        decoding: Optional[Mapping[str, Any]] = None,
        batch_size: int = 8,
    ) -> None:
        from empathy_nlg.backbone.loader import load_backbone

        self.decoding = DecodingConfig.from_mapping(decoding or {})
        self.batch_size = batch_size
        self.backbone = load_backbone(backbone_path, device=device, dtype=dtype, adapter=adapter)
        if self.backbone.is_seq2seq:
            raise ValueError("the prompted generator needs a causal (chat) LM; got a seq2seq checkpoint")
        self.version = f"{self.backbone.name}/prompt-v1"
        tok = self.backbone.tokenizer
        tok.padding_side = "left"

    # -- prompting ---------------------------------------------------------------------------
    def _encode_prompts(self, requests: Sequence[GenerationRequest]):
        tok = self.backbone.tokenizer
        texts = [tok.apply_chat_template(build_messages(r), add_generation_prompt=True, tokenize=False) for r in requests]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.backbone.device) for k, v in batch.items()}

    def generate(self, requests: Sequence[GenerationRequest]) -> List[GenerationResult]:
        import torch

        d = self.decoding
        tok = self.backbone.tokenizer
        results: List[GenerationResult] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = list(requests[start : start + self.batch_size])
            batch = self._encode_prompts(chunk)
            torch.manual_seed(d.seed)
            kwargs: Dict[str, Any] = dict(
                max_new_tokens=d.max_new_tokens,
                do_sample=d.do_sample,
                num_beams=d.num_beams,
                repetition_penalty=d.repetition_penalty,
                no_repeat_ngram_size=d.no_repeat_ngram_size,
                pad_token_id=tok.pad_token_id,
            )
            if d.do_sample:
                kwargs.update(temperature=d.temperature, top_p=d.top_p)
            with torch.inference_mode():
                out = self.backbone.model.generate(**batch, **kwargs)
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            for request, ids in zip(chunk, new_tokens):
                raw = tok.decode(ids, skip_special_tokens=True)
                results.append(
                    GenerationResult(
                        text=clean_reply(raw),
                        generator=self.name,
                        version=self.version,
                        knowledge=dict(request.knowledge),
                        details={"raw": raw, "system_prompt": build_system_prompt(request)},
                    )
                )
        return results

    def score(self, requests: Sequence[GenerationRequest], references: Sequence[str]) -> Optional[Dict[str, float]]:
        """Sum of token NLLs of each reference as the assistant's next turn (for perplexity)."""
        import torch

        tok = self.backbone.tokenizer
        total_nll, total_tokens = 0.0, 0
        for request, reference in zip(requests, references):
            prompt = tok.apply_chat_template(build_messages(request), add_generation_prompt=True, tokenize=False)
            prompt_ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            ref_ids = tok(reference.strip() + "<|im_end|>", add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = torch.cat([prompt_ids, ref_ids], dim=1).to(self.backbone.device)
            labels = ids.clone()
            labels[:, : prompt_ids.shape[1]] = -100
            with torch.inference_mode():
                loss = self.backbone.model(input_ids=ids, labels=labels).loss
            n = int(ref_ids.shape[1])
            total_nll += float(loss) * n
            total_tokens += n
        return {"nll": total_nll, "tokens": total_tokens, "tokenizer": f"{self.backbone.name} (BPE, 49k)"}
