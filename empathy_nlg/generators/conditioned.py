"""Shared machinery of the trained generators (IMAGINE, NEC): a backbone with LoRA adapters that is
conditioned on *prefix vectors*.

A paper module computes, per example, a sequence of ``d``-dimensional vectors (``d`` = the
backbone's hidden size) from what it perceives — emotion and CM signals, a knowledge-refined cause
representation, social commonsense… — and :class:`ConditionedBackbone` places them in front of
the token embeddings of the dialogue prompt:

* causal LM (SmolLM2, Llama, GPT-2): ``[prefix ; prompt ; reply]`` is one decoder sequence; the
  loss covers the reply tokens only. By default the prefix vectors are input embeddings and enter
  at the bottom. With ``prefix_layer`` set (a paper's ``prefix_top_layers`` setting) they enter
  only the top layers: the lower layers see a zero placeholder at the prefix positions and the
  vectors are added to the residual stream at the input of decoder layer ``prefix_layer`` — the
  layer-wise form of prefix conditioning (as in prefix-tuning, which feeds every layer its own
  prefix). Nothing below that layer then depends on a trainable parameter, so with
  ``lora.top_layers`` set to the same depth a training step runs the lower layers forward only
  (the CPU fast path) although the paper's conditioning is trained;
* seq2seq (BART): ``[prefix ; prompt]`` is the encoder input, the reply is the decoder target.

Only the LoRA matrices and the paper module's own layers are trained; the backbone weights stay
frozen, so what a paper ships is an adapter folder plus a small head file (:func:`save_trained`,
:func:`load_adapter` + :func:`load_heads`).

Also here: the dialogue prompt (:func:`prompt_messages`), FACE token weights (Jiang et al. 2019,
"pre-weight" variant, computed on the training replies), the token losses and NEC's ranking loss
(:func:`rank_margin_loss`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from empathy_nlg.datasets import Utterance
from empathy_nlg.hardware import serving_dtype
from empathy_nlg.settings import TrainSettings, settings_from_mapping
from empathy_nlg.text import CELEBRATION_WORDS, NO_ECHO_PREFIXES, STOPWORDS, SYMPATHY_WORDS, words

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "Reply as a kind, empathetic friend."  # short: every token costs training time
HEADS_FILE = "heads.safetensors"
ADAPTER_DIR = "adapter"
CONFIG_FILE = "generator.json"


# ----------------------------------------------------------------------------------- text side
def prompt_messages(context: Sequence[Utterance], turns: int, extra_system: str = "") -> List[Dict[str, str]]:
    """The last ``turns`` utterances as chat messages (user = speaker, assistant = listener)."""
    system = SYSTEM_PROMPT + (" " + extra_system if extra_system else "")
    messages = [{"role": "system", "content": system}]
    for u in list(context)[-max(1, turns):]:
        messages.append({"role": "user" if u.role == "speaker" else "assistant", "content": u.text})
    return messages


def prompt_text(tokenizer, messages: List[Dict[str, str]]) -> str:
    """The chat prompt as text (generation prompt appended), before tokenisation."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # plain checkpoints (GPT-2, BART): "speaker: … listener:" lines
    lines = [f"{'speaker' if m['role'] == 'user' else 'listener'}: {m['content']}" for m in messages[1:]]
    return "\n".join(lines) + "\nlistener:"


def encode_prompt(tokenizer, messages: List[Dict[str, str]], max_tokens: int, keep_system: bool = False) -> List[int]:
    """Token ids of the chat prompt (generation prompt appended); the oldest tokens are cut first.

    ``keep_system``: a prompt that is too long loses its oldest *dialogue* tokens and keeps the whole
    system message (what a generator put there — a remembered persona — must survive a long turn),
    as long as the system message leaves at least a quarter of ``max_tokens`` to the dialogue; a
    plain checkpoint without a chat template has no system message to keep."""
    ids = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return ids
    if keep_system and messages and messages[0]["role"] == "system" and getattr(tokenizer, "chat_template", None):
        head_text = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=False, tokenize=False)
        head = tokenizer(head_text, add_special_tokens=False)["input_ids"]
        if ids[: len(head)] == head and len(head) <= max_tokens - max(1, max_tokens // 4):
            return head + ids[len(head):][-(max_tokens - len(head)):]
    return ids[-max_tokens:]


def encode_reply(tokenizer, text: str, max_tokens: int, seq2seq: bool) -> List[int]:
    """Reply token ids ending with the end-of-turn token (kept even when the reply is cut)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(" ".join(text.split()), add_special_tokens=False)["input_ids"][: max_tokens - 1]
    if seq2seq and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids[: max_tokens - 2]
    return ids + [eos]


def face_weights(tokenizer, replies: Sequence[str], vocab_size: int) -> List[float]:
    """FACE "pre-weight" token weights from the training replies.

    ``RF_i`` = relative frequency of token i; ``w_i = 1 − RF_i / max RF`` (the most frequent token
    weighs 0, rare tokens ≈ 1), then rescaled so that the frequency-weighted mean weight is 1 — the
    loss keeps the scale of plain cross-entropy while frequent tokens count less.
    """
    counts: Counter = Counter()
    for text in replies:
        counts.update(tokenizer(" ".join(text.split()), add_special_tokens=False)["input_ids"])
    counts[tokenizer.eos_token_id] += len(replies)
    total = sum(counts.values()) or 1
    max_rf = max(counts.values()) / total if counts else 1.0
    weights = [1.0] * vocab_size
    for tok, c in counts.items():
        if 0 <= tok < vocab_size:
            weights[tok] = 1.0 - (c / total) / max_rf
    mean = sum(weights[t] * c for t, c in counts.items() if 0 <= t < vocab_size) / total
    mean = mean if mean > 1e-8 else 1.0
    return [w / mean for w in weights]


# ----------------------------------------------------------------------------------- model side
@dataclass
class TrainedSettings:
    """What the settings of every trained generator hold (saved with the model): the prompt
    window and the reply length. A paper's settings subclass this, add its own architecture
    switches and knobs, and name the switches its ablations turn off (``SWITCHES``), which also
    name its variant (``nec-no-entity``)."""

    #: the generator's name (the variant's stem and the config section named in errors)
    NAME: ClassVar[str] = "trained"
    #: boolean fields an ablation switches off (``--ablate PART``)
    SWITCHES: ClassVar[Tuple[str, ...]] = ()

    context_turns: int = 2
    max_prompt_tokens: int = 128
    max_reply_tokens: int = 32

    @classmethod
    def from_mapping(cls, values: Optional[Mapping[str, Any]]):
        return settings_from_mapping(cls, values, cls.NAME)

    @staticmethod
    def switch_label(switch: str) -> str:
        """How a switched-off part reads in the variant name."""
        return switch

    @property
    def variant(self) -> str:
        off = [self.switch_label(n) for n in self.SWITCHES if not getattr(self, n)]
        return self.NAME if not off else f"{self.NAME}-no-" + "-".join(off)


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    #: adapt only the top ``top_layers`` decoder layers (``None``: all). With nothing trainable
    #: below them, autograd records no graph for the lower layers: a step runs them forward only.
    top_layers: Optional[int] = None

    @classmethod
    def from_mapping(cls, values: Optional[Mapping[str, Any]]) -> "LoraSettings":
        return settings_from_mapping(cls, values, "lora")


def attach_lora(model, settings: LoraSettings):
    """Wrap a (frozen) backbone with fresh LoRA adapters; only those are trainable."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in settings.target_modules if t in names]
    if not targets:
        raise ValueError(f"none of the LoRA target modules {settings.target_modules} exist in this backbone")
    layers = None
    if settings.top_layers:
        n = int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layer", 0))
        if not n:
            raise ValueError("lora.top_layers: this backbone does not say how many layers it has")
        if not 1 <= settings.top_layers <= n:
            raise ValueError(f"lora.top_layers must be between 1 and {n}, got {settings.top_layers}")
        layers = list(range(n - settings.top_layers, n))
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets,
                        layers_to_transform=layers)
    return get_peft_model(model, config)


class ConditionedBackbone:
    """A (LoRA-wrapped) backbone fed with ``[prefix ; prompt (; reply)]`` embeddings."""

    def __init__(self, model, tokenizer, is_seq2seq: bool, device: str) -> None:
        import torch

        self.model = model
        #: run training/scoring forwards under bf16 autocast (set by the trainer; CPUs with
        #: AVX-512 BF16 and GPUs gain most)
        self.autocast: Optional[str] = None
        #: compute the LM head only where a reply token is predicted (False: over every position,
        #: as a plain forward does; kept for the training benchmark's baseline)
        self.reply_head_only = True
        #: the decoder layer at whose input the prefix vectors join the residual stream (``None``:
        #: they are input embeddings); see the module docstring
        self.prefix_layer: Optional[int] = None
        #: ``generate`` runs the prompt once per example and repeats its key/value cache for the
        #: beams (False: ``transformers`` repeats the prompt ``num_beams`` times and runs every copy;
        #: kept as the benchmark's baseline and the tests' reference)
        self.shared_prefill = True
        #: the decoder layers an ``attention_bias`` applies in (``None``: all); see :meth:`biased`
        self.bias_layers: Optional[List[int]] = None
        self.tokenizer = tokenizer
        self.is_seq2seq = is_seq2seq
        self.device = device
        emb = self.embeddings.weight
        self.hidden_size = int(emb.shape[1])
        with torch.no_grad():
            self.embedding_rms = float(emb.float().pow(2).mean().sqrt())

    def prepare_for_serving(self) -> None:
        """Serving only (the weights stop being trainable): the LoRA adapters merged into the
        backbone's weights — the same function (tested), without the adapters' extra matmuls on
        every decoding step. (Dynamic int8 quantisation of the Linear layers was measured too and
        rejected: ≈ 3× faster decoding here, but none of 8 replies stayed the same and they got
        worse; docs/generators.md.)"""
        if hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()
        self.model.eval()

    def use_attention(self, implementation: Optional[str]) -> str:
        """Serving: the backbone's attention kernel (``eager``, ``sdpa``; None or ``auto``: leave it),
        set through ``transformers``' own ``set_attn_implementation``; returns the one in use."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if implementation not in (None, "auto") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(implementation)
        return str(getattr(model.config, "_attn_implementation", "") or "default")

    def cast_for_serving(self, mode: Optional[str] = "auto") -> str:
        """Serving only: the backbone's weights cast to the dtype ``mode`` resolves to (as for
        autocast, :func:`resolve_autocast`: ``auto`` → bf16 on CUDA and on CPUs that multiply bf16
        natively, else unchanged; ``float32``/``none`` → unchanged) after the adapters were merged
        in fp32. Decoding one token for a few beams reads every weight once and is bound by memory
        bandwidth: half the bytes, ≈ ×1.5–1.7 faster steps on an AVX-512 BF16 CPU
        (``bench-generate --speedups``). The paper heads stay fp32; their outputs are cast where
        they enter the backbone. Returns the dtype the backbone now has (``"float32"``, …)."""
        import torch

        target = resolve_autocast(mode, self.device)
        if target is not None:
            self.model.to(_autocast_dtype(target))
        return str(self.embeddings.weight.dtype).replace("torch.", "")

    @property
    def embeddings(self):
        return self.model.get_input_embeddings()

    def embed(self, ids):
        return self.embeddings(ids)

    # -- batching ------------------------------------------------------------------------------
    def _rows(self, prefixes, prompts: Sequence[List[int]], replies: Optional[Sequence[List[int]]]):
        """Per example: the prefix rows (tensor [P_i, d]) followed by the prompt (and reply) embeddings."""
        import torch

        out = []
        for i, prompt in enumerate(prompts):
            ids = list(prompt) + (list(replies[i]) if (replies is not None and not self.is_seq2seq) else [])
            tok = self.embed(torch.tensor(ids, dtype=torch.long, device=self.device))
            out.append((prefixes[i], tok))
        return out

    def _pad(self, pieces, left: bool):
        import torch

        lengths = [p.shape[0] + t.shape[0] for p, t in pieces]
        width = max(lengths)
        d = self.hidden_size
        dtype = pieces[0][1].dtype
        embeds = torch.zeros(len(pieces), width, d, dtype=dtype, device=self.device)
        mask = torch.zeros(len(pieces), width, dtype=torch.long, device=self.device)
        starts = []
        for i, ((p, t), n) in enumerate(zip(pieces, lengths)):
            s = width - n if left else 0
            row = torch.cat([p.to(dtype), t], dim=0)
            embeds[i, s : s + n] = row
            mask[i, s : s + n] = 1
            starts.append(s)
        return embeds, mask, starts

    def _inputs(self, pieces, left: bool):
        """``(embeds, mask, starts, inject)``: the padded input embeddings and, when the prefix
        enters at ``prefix_layer``, the prefix rows at their positions (``inject``, else ``None``);
        the embeddings then hold zeros there."""
        import torch

        if self.prefix_layer is None or self.is_seq2seq or all(p.shape[0] == 0 for p, _ in pieces):
            embeds, mask, starts = self._pad(pieces, left)
            return embeds, mask, starts, None
        blank = [(torch.zeros(p.shape[0], t.shape[1], dtype=t.dtype, device=t.device), t) for p, t in pieces]
        embeds, mask, starts = self._pad(blank, left)
        rows, width = [], embeds.shape[1]
        for (p, _t), s in zip(pieces, starts):
            rows.append(torch.cat([p.new_zeros(s, p.shape[1]), p, p.new_zeros(width - s - p.shape[0], p.shape[1])], dim=0))
        return embeds, mask, starts, torch.stack(rows)

    def decoder_layers(self):
        """The decoder blocks of a decoder-only backbone (``model.layers`` of Llama-style bodies,
        ``transformer.h`` of GPT-2)."""
        body = self._decoder_body()
        layers = getattr(body, "layers", None) or getattr(body, "h", None)
        if layers is None:
            raise ValueError("prefix_top_layers: this backbone's decoder layers were not found")
        return layers

    @contextlib.contextmanager
    def injected(self, inject):
        """While active, the input of decoder layer ``prefix_layer`` gets ``inject`` added on the
        forward pass that covers the whole sequence (training, scoring, the first step of
        ``generate``); later decoding steps see the prefix through the key/value cache. Beam search
        repeats every example ``num_beams`` times: so is ``inject``."""
        if inject is None:
            yield
            return
        width = inject.shape[1]

        def hook(_module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            if h.shape[1] != width:  # a decoding step after the first: nothing to add
                return None
            add = inject if h.shape[0] == inject.shape[0] else inject.repeat_interleave(h.shape[0] // inject.shape[0], dim=0)
            h = h + add.to(h.dtype)
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}

        handle = self.decoder_layers()[self.prefix_layer].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def biased(self, bias, starts: Sequence[int], lengths: Sequence[int], width: int):
        """While active, an additive bias on the attention logits of the decoder layers
        :attr:`bias_layers` (``None``: all) — how a paper steers what the reply attends to in the
        conditioning (Gao et al.'s gated attention, ``cause_gated``).

        ``bias`` holds one 1-D tensor per example over its ``[prefix ; prompt]`` positions
        (``lengths[i]`` of them; 0 leaves a position alone, ``-inf`` blocks it); ``starts`` and
        ``width`` place them in the padded frame of the pass (:meth:`_inputs`). It applies to the
        queries that predict reply tokens — the last prompt position and every reply position —
        over those keys, never to the prompt's queries: the prompt's own states (the key/value
        cache of :meth:`_prefill`) are those of the unbiased backbone, and every decoding step of
        every beam attends to the cached prompt keys through the bias. Keys past the prompt (the
        reply so far) get none. The decoder layers must take an ``attention_mask`` keyword and
        the kernel must add a float mask (``eager``, ``sdpa``). ``None``: nothing changes."""
        if bias is None:
            yield
            return
        import torch

        if self.is_seq2seq:
            raise ValueError("an attention bias needs a decoder-only backbone, not a seq2seq one")
        kernel = str(getattr(self._decoder_body().config, "_attn_implementation", None) or "eager")
        if kernel not in ("eager", "sdpa"):
            raise ValueError(f"an attention bias needs the eager or sdpa attention kernel, not {kernel!r}")
        if len(bias) != len(starts):
            raise ValueError(f"attention bias: {len(bias)} rows for {len(starts)} examples")
        frame = torch.zeros(len(bias), width, dtype=torch.float32, device=self.device)
        first = []
        for i, (row, s, n) in enumerate(zip(bias, starts, lengths)):
            if row.dim() != 1 or row.shape[0] != n:
                raise ValueError(f"attention bias of example {i}: {tuple(row.shape)} for {n} prefix + prompt positions")
            frame[i, s : s + n] = row.to(device=self.device, dtype=torch.float32)
            first.append(s + n - 1)  # the position that predicts the first reply token
        first_t = torch.tensor(first, dtype=torch.long, device=self.device)
        layers = self.decoder_layers()
        chosen = range(len(layers)) if self.bias_layers is None else self.bias_layers
        handles = [layers[i].register_forward_pre_hook(
            _attention_bias_hook(frame, first_t, getattr(getattr(layers[i], "self_attn", None), "layer_idx", i)),
            with_kwargs=True) for i in chosen]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def stream_rms(self, layer: Optional[int]) -> float:
        """The RMS of the residual stream at the input of decoder ``layer`` over a short fixed text
        (``None``: the input embeddings' RMS) — the scale a prefix entering there starts at."""
        import torch

        if layer is None or self.is_seq2seq:
            return self.embedding_rms
        ids = self.tokenizer("I lost my job today and I do not know what to tell my family.",
                             add_special_tokens=False)["input_ids"]
        batch = torch.tensor([ids], dtype=torch.long, device=self.device)
        with torch.no_grad():
            states = self._decoder_body()(inputs_embeds=self.embed(batch), output_hidden_states=True).hidden_states
        return float(states[layer][0, 1:].float().pow(2).mean().sqrt())  # without the first position's outlier

    def forward(self, prefixes, prompts: Sequence[List[int]], replies: Sequence[List[int]], hidden: bool = False,
                attention_bias=None):
        """Logits for every reply token (teacher forcing).

        Returns ``(logits [B, R, V], targets [B, R] with -100 padding, info)``; ``info`` has the
        last-layer hidden states of the prompt and reply positions when ``hidden``.
        ``attention_bias``: see :meth:`biased` (``None``: none).
        """
        import torch

        pieces = self._rows(prefixes, prompts, replies)
        embeds, mask, starts, inject = self._inputs(pieces, left=False)
        r_max = max(len(r) for r in replies)
        targets = torch.full((len(replies), r_max), -100, dtype=torch.long, device=self.device)
        info: Dict[str, Any] = {}
        if self.is_seq2seq:
            if attention_bias is not None:
                raise ValueError("an attention bias needs a decoder-only backbone, not a seq2seq one")
            dec = torch.full((len(replies), r_max), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
            dec_mask = torch.zeros_like(dec)
            for i, r in enumerate(replies):
                dec[i, : len(r)] = torch.tensor(r, device=self.device)
                dec_mask[i, : len(r)] = 1
                targets[i, : len(r) - 1] = torch.tensor(r[1:], device=self.device)
            out = self.model(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=dec,
                             decoder_attention_mask=dec_mask, output_hidden_states=hidden)
            logits = out.logits
            if hidden:
                info["context_hidden"], info["context_mask"] = out.encoder_last_hidden_state, mask
                info["reply_hidden"], info["reply_mask"] = out.decoder_hidden_states[-1], dec_mask
            return logits, targets, info
        with self._autocast(), self.injected(inject), \
                self.biased(attention_bias, starts, self._conditioning_lengths(prefixes, prompts), embeds.shape[1]):
            last = self._body(embeds, mask)
            # the LM head (vocabulary × hidden, the largest single matmul of a small model) runs only
            # on the positions that predict a reply token, not on the prompt
            rows, reply_hidden, ctx_hidden = [], [], []
            spans = []  # per example: the positions that predict its reply tokens
            for i, ((p, t), r) in enumerate(zip(pieces, replies)):
                start = p.shape[0] + len(prompts[i])  # first reply position
                # position j predicts token j+1: positions [start-1, start+len(r)-1) predict the reply
                spans.append(slice(start - 1, start - 1 + len(r)))
                rows.append(last[i, spans[-1]])
                targets[i, : len(r)] = torch.tensor(r, device=self.device)
                if hidden:
                    ctx_hidden.append(last[i, :start])
                    reply_hidden.append(last[i, start : start + len(r)])
            head = self.model.get_output_embeddings()
            if self.reply_head_only:
                flat = head(torch.cat(rows, dim=0))
            else:
                full = head(last)
                flat = torch.cat([full[i, span] for i, span in enumerate(spans)], dim=0)
        logits = torch.nn.utils.rnn.pad_sequence(list(flat.split([x.shape[0] for x in rows])), batch_first=True)
        if hidden:
            info["context_hidden"], info["context_mask"] = _pad_list(ctx_hidden)
            info["reply_hidden"], info["reply_mask"] = _pad_list(reply_hidden)
        return logits, targets, info

    def _autocast(self):
        import contextlib

        import torch

        mode = resolve_autocast(self.autocast, self.device)
        if mode is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=_autocast_dtype(mode))

    @contextlib.contextmanager
    def without_dropout(self):
        """While active, the backbone's dropout layers (LoRA's among them) are off, the rest of
        training mode unchanged: passes whose outputs are representations rather than predictions
        (NEC's reply vectors) — the same text then gives the same vector wherever it occurs in a
        batch, so it is encoded once, and no random mask is drawn (on 2 CPU cores a dropout mask over
        a pass of 256 replies costs seconds)."""
        import torch

        layers = [m for m in self.model.modules() if isinstance(m, torch.nn.Dropout) and m.training]
        for m in layers:
            m.train(False)
        try:
            yield
        finally:
            for m in layers:
                m.train(True)

    @contextlib.contextmanager
    def frozen_weights_cast(self):
        """While active — a no-grad pass of many small steps under autocast (the greedy decoding of
        NEC's y′ negatives in training) — the frozen linear weights are held in the autocast dtype,
        so autocast does not cast all of them again at every decoding step (it caches casts of
        trainable leaves only). A weight shared with the input embedding is left as it is; without
        autocast this does nothing."""
        import torch

        mode = resolve_autocast(self.autocast, self.device)
        if mode is None:
            yield
            return
        dtype = _autocast_dtype(mode)
        embedding = self.model.get_input_embeddings()
        shared = embedding.weight if embedding is not None else None
        saved = []
        for m in self.model.modules():
            w = getattr(m, "weight", None)
            if (isinstance(m, torch.nn.Linear) and w is not None and not w.requires_grad and w is not shared
                    and w.dtype == torch.float32):
                saved.append((w, w.data))
                w.data = w.data.to(dtype)
        try:
            yield
        finally:
            for w, data in saved:
                w.data = data

    def _body(self, embeds, mask):
        """Last-layer hidden states of a decoder-only backbone (after its final norm), without
        the LM head."""
        return self._decoder_body()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    @staticmethod
    def _conditioning_lengths(prefixes, prompts: Sequence[List[int]]) -> List[int]:
        """Per example: its number of ``[prefix ; prompt]`` positions."""
        return [(prefixes[i].shape[0] if prefixes is not None else 0) + len(p) for i, p in enumerate(prompts)]

    def _decoder_body(self):
        """The decoder stack of a decoder-only backbone (under the PEFT wrapper), without the LM head."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return getattr(base, base.base_model_prefix)

    def generate(self, prefixes, prompts: Sequence[List[int]], decoding: Mapping[str, Any], num_return: int = 1,
                 sequence_bias: Optional[List[List[Any]]] = None, context_out: Optional[List[Any]] = None,
                 row_bias: Optional[Sequence[List[List[Any]]]] = None, attention_bias=None):
        """Generated token ids (decoder-only models return only the new tokens when fed
        ``inputs_embeds``; BART's start tokens are special and vanish in :meth:`decode`) and,
        with several returns, the beam scores (length-normalised log-probabilities).

        ``sequence_bias`` (``[[token ids], bias], …``, see :func:`history_bias`,
        :func:`grounding_bias` and :func:`tone_bias`) shifts the logit of a token that would
        complete one of the listed sequences: how decoding keeps away from what the assistant
        already said earlier in the conversation and from a tone that contradicts the user's news,
        and leans towards the words the user said.

        ``row_bias`` (one list of such entries per example, after ``sequence_bias``'s shared ones):
        each example's own steering, so that requests with different biases (their users' words,
        their news, their conversations' earlier replies) decode in one batch, each exactly as it
        would alone (:class:`RowSequenceBias`).

        ``context_out`` (a list, decoder-only backbones): receives the mean last-layer hidden state
        of each ``[prefix ; prompt]`` ([B, d], what :meth:`context_vectors` computes), taken from
        the passes that encode the prompt anyway (the shared prefill and the first decoding step)
        — a reranker that needs it (NEC's ``z_x``) then costs no second pass over the prompt.

        The prompt runs once per example (:meth:`_prefill`), not once per beam: same tokens and
        scores as ``transformers.generate`` alone (``shared_prefill = False``), ×1.6 faster for
        NEC's 4 beams here (``bench-generate --speedups``).

        ``attention_bias`` (one row per example, see :meth:`biased`): applied from the last prompt
        position on, at every decoding step of every beam, over the (cached) prompt keys."""
        import torch

        from empathy_nlg.decoding.generation import generate_kwargs

        pieces = self._rows(prefixes, prompts, None)
        embeds, mask, starts, inject = self._inputs(pieces, left=not self.is_seq2seq)
        d = generate_kwargs(decoding)  # the project's one set of decoding defaults
        kwargs: Dict[str, Any] = dict(
            max_new_tokens=int(d["max_new_tokens"]),
            do_sample=bool(d["do_sample"]),
            num_beams=max(int(d["num_beams"]), num_return),
            num_return_sequences=num_return,
            repetition_penalty=float(d["repetition_penalty"]),
            no_repeat_ngram_size=int(d["no_repeat_ngram_size"]),
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if kwargs["do_sample"]:
            kwargs.update(temperature=float(d["temperature"]), top_p=float(d["top_p"]))
        if row_bias is not None:
            shared = [[list(ids), float(b)] for ids, b in (sequence_bias or [])]
            rows = [shared + [[list(ids), float(b)] for ids, b in own] for own in row_bias]
            if len(rows) != len(prompts):
                raise ValueError(f"row_bias has {len(rows)} entries for {len(prompts)} prompts")
            kwargs["logits_processor"] = steering_processors(rows, kwargs)
        elif sequence_bias:
            kwargs["sequence_bias"] = [[list(ids), float(b)] for ids, b in sequence_bias]
        if kwargs["num_beams"] > 1:
            kwargs["early_stopping"] = bool(d["early_stopping"])
        if num_return > 1:
            kwargs.update(output_scores=True, return_dict_in_generate=True)
        head = None
        lengths = self._conditioning_lengths(prefixes, prompts)
        with torch.inference_mode(), warnings.catch_warnings(), self.biased(attention_bias, starts, lengths, embeds.shape[1]):
            if self.shared_prefill and not self.is_seq2seq and embeds.shape[1] > 1:
                kwargs["past_key_values"], head = self._prefill(
                    embeds, mask, inject, max(kwargs["num_beams"], num_return))
                inject = None  # the prefix is in the cache; generate() runs only the last prompt position
            with self.injected(inject), self._prompt_states(mask, context_out, head):
                # Fed embeddings, generate() applies the repetition penalty and the no-repeat n-grams to
                # the reply only (not to the prompt) — what we want: echoing the user is not penalised.
                warnings.filterwarnings("ignore", message=r"Passing `(repetition_penalty|no_repeat_ngram_size)` with `inputs_embeds`")
                out = self.model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        if num_return > 1:
            seqs = out.sequences
            scores = getattr(out, "sequences_scores", None)
            return seqs, scores
        return out, None

    def _prefill(self, embeds, mask, inject, expand: int):
        """``(cache, hidden)``: the decoder run once per example over all prompt positions but the
        last (the prefix injected as usual), its key/value cache repeated ``expand`` times for the
        beams (or samples) — ``generate`` alone would repeat the prompt ``num_beams`` times and run
        every copy — and the last-layer hidden states of those positions. ``generate`` then runs
        only the last position, with the positions it would have given them (left padding)."""
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        with self.injected(None if inject is None else inject[:, :-1]):
            out = self._decoder_body()(inputs_embeds=embeds[:, :-1], attention_mask=mask[:, :-1],
                                       position_ids=positions[:, :-1], use_cache=True)
        cache = out.past_key_values
        if expand > 1:
            cache.batch_repeat_interleave(expand)
        return cache, out.last_hidden_state

    @contextlib.contextmanager
    def _prompt_states(self, mask, context_out: Optional[List[Any]], head=None):
        """While active, the first forward pass of ``generate`` appends the masked mean of the
        prompt's last-layer hidden states (one row per example, beams folded) to ``context_out``:
        that pass covers the whole prompt (width of ``mask``), or, after :meth:`_prefill`, only its
        last position, whose states join ``head`` (the prefill's states of the others)."""
        if context_out is None or self.is_seq2seq:
            yield
            return
        import torch

        n, width = mask.shape
        taken: List[Any] = []

        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output.last_hidden_state
            if taken or h.shape[1] != (width if head is None else 1):
                return
            rows = h[:: h.shape[0] // n] if h.shape[0] != n else h  # beams repeat each example: one row each
            if head is not None:
                rows = torch.cat([head, rows.to(head.dtype)], dim=1)
            taken.append(masked_mean(rows.float(), mask))

        handle = self._decoder_body().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
            context_out.extend(taken)

    def reply_nll(self, prefixes, prompts: Sequence[List[int]], replies: Sequence[List[int]],
                  attention_bias=None) -> Tuple[float, int]:
        """Summed NLL and token count of ``replies`` given ``[prefix ; prompt]`` (teacher forcing)."""
        logits, targets, _ = self.forward(prefixes, prompts, replies, attention_bias=attention_bias)
        return summed_nll(logits, targets)

    def context_vectors(self, prefixes, prompts: Sequence[List[int]]):
        """Mean last-layer hidden state over ``[prefix ; prompt]`` (NEC's ``z_x``) → [B, d]."""
        pieces = self._rows(prefixes, prompts, None)
        embeds, mask, _, inject = self._inputs(pieces, left=False)
        if self.is_seq2seq:
            hidden = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        else:
            with self._autocast(), self.injected(inject):
                hidden = self._body(embeds, mask)
        return masked_mean(hidden.float(), mask)

    def text_vectors(self, texts: Sequence[str], max_tokens: int = 32):
        """Mean last-layer hidden state of each text on its own (NEC's ``z_y``) → [N, d]."""
        import torch

        ids = [self.tokenizer(" ".join(t.split()) or ".", add_special_tokens=False)["input_ids"][:max_tokens] or
               [self.tokenizer.eos_token_id] for t in texts]
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id
        batch = torch.full((len(ids), width), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(batch)
        for i, row in enumerate(ids):
            batch[i, : len(row)] = torch.tensor(row, device=self.device)
            mask[i, : len(row)] = 1
        if self.is_seq2seq:
            hidden = self.model.get_encoder()(input_ids=batch, attention_mask=mask).last_hidden_state
        else:
            with self._autocast():
                hidden = self._body(self.embed(batch), mask)
        return masked_mean(hidden.float(), mask)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _attention_bias_hook(frame, first, layer_idx: int):
    """A forward pre-hook of decoder layer ``layer_idx`` adding ``frame`` ([examples, width]: the
    bias over the key positions of the pass's padded frame) to the attention mask of the queries at
    or after ``first`` ([examples]: each example's last prompt position); see
    :meth:`ConditionedBackbone.biased`. Beams (or samples) repeat each example; keys beyond
    ``width`` (the reply so far) get no bias. A mask the backbone left out (sdpa's causal fast path)
    or gave as booleans is rebuilt as floats first; the result is floored at the dtype's minimum so
    that a blocked key is exactly 0 after the softmax, never NaN."""

    def hook(_module, args, kwargs):
        import torch

        if "attention_mask" not in kwargs:
            raise ValueError("an attention bias needs decoder layers that take an attention_mask keyword")
        h = args[0] if args else kwargs["hidden_states"]
        b, q = int(h.shape[0]), int(h.shape[1])
        mask = kwargs["attention_mask"]
        cache = kwargs.get("past_key_values")
        past = int(cache.get_seq_length(layer_idx)) if cache is not None else 0
        k = int(mask.shape[-1]) if mask is not None else past + q
        offset = k - q  # the absolute position of the pass's first query
        rep = max(1, b // frame.shape[0])
        rows_first = first.repeat_interleave(rep) if rep > 1 else first
        if offset + q - 1 < int(rows_first.min()):
            return None  # no query of this pass predicts a reply token (the shared prefill)
        device = h.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else h.dtype
        low = torch.finfo(dtype).min
        qpos = offset + torch.arange(q, device=device)
        if mask is None:
            causal = torch.arange(k, device=device)[None, :] <= qpos[:, None]
            base = torch.zeros(q, k, dtype=dtype, device=device).masked_fill(~causal, low)[None, None]
        elif mask.dtype == torch.bool:
            base = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, low)
        else:
            base = mask.to(dtype)
        base = base.expand(b, base.shape[1], q, k)
        cols = frame.repeat_interleave(rep, dim=0) if rep > 1 else frame
        cols = cols[:, :k] if cols.shape[1] >= k else torch.nn.functional.pad(cols, (0, k - cols.shape[1]))
        rows = (qpos[None, :] >= rows_first[:, None])[:, None, :, None]  # [b, 1, q, 1]
        add = torch.where(rows, cols[:, None, None, :].to(device=device, dtype=dtype), torch.zeros((), dtype=dtype, device=device))
        return args, {**kwargs, "attention_mask": (base + add).clamp(min=low)}

    return hook


def _autocast_dtype(mode: str):
    """The torch dtype of a resolved autocast mode (``"bf16"`` / ``"fp16"``)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def resolve_autocast(mode: Optional[str], device: str) -> Optional[str]:
    """``auto`` → bf16 on CUDA and on CPUs with native bf16, else none; ``bf16``/``fp16`` as given."""
    if mode in (None, "none", "float32"):
        return None
    if mode == "auto":  # the one rule for where bf16 is fast: empathy_nlg.hardware
        return "bf16" if serving_dtype("auto", device) == "bfloat16" else None
    if mode in ("bf16", "bfloat16"):
        return "bf16"
    if mode in ("fp16", "float16"):
        return "fp16"
    raise ValueError(f"autocast must be auto, none, bf16 or fp16, got {mode!r}")


class RowSequenceBias:
    """``transformers``' sequence bias with each example's own entries: a logits processor over
    the ``batch × rows_per_example`` rows of a decoding step (beams or returned samples stay in
    their example's block), applying to each block exactly what ``SequenceBiasLogitsProcessor``
    would apply to that example decoded alone."""

    def __init__(self, rows: Sequence[List[List[Any]]], rows_per_example: int) -> None:
        from transformers.generation.logits_process import SequenceBiasLogitsProcessor

        self.k = int(rows_per_example)
        # an example without entries gets no processor (transformers refuses an empty list)
        self.processors = [SequenceBiasLogitsProcessor(sequence_bias=entries) if entries else None for entries in rows]

    def __call__(self, input_ids, scores):
        out = scores.clone()
        for i, proc in enumerate(self.processors):
            if proc is not None:
                block = slice(i * self.k, (i + 1) * self.k)
                out[block] = proc(input_ids[block], scores[block])
        return out


def steering_processors(rows: Sequence[List[List[Any]]], kwargs: Dict[str, Any]):
    """The logits processors of a greedy or beam decoding with per-example biases, in
    ``transformers``' own order (sequence bias, repetition penalty, no-repeat n-grams), taking those
    settings out of ``kwargs`` so that ``generate`` does not add them a second time. (Sampling adds
    warpers that ``transformers`` orders among these: it decodes one request at a time.)"""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    if kwargs.get("do_sample"):
        raise ValueError("per-example biases are for greedy and beam decoding; sampling decodes one request at a time")
    procs = LogitsProcessorList([RowSequenceBias(rows, kwargs["num_beams"])])
    if kwargs.get("repetition_penalty", 1.0) != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(kwargs["repetition_penalty"]))
    if kwargs.get("no_repeat_ngram_size", 0) > 0:
        procs.append(NoRepeatNGramLogitsProcessor(kwargs["no_repeat_ngram_size"]))
    kwargs.update(repetition_penalty=1.0, no_repeat_ngram_size=0)
    return procs


def history_bias(tokenizer, replies: Sequence[str], n: int = 3, bias: float = -4.0, limit: int = 400) -> List[List[Any]]:
    """``sequence_bias`` entries that discourage every token ``n``-gram of earlier replies.

    The within-reply ``no_repeat_ngram_size`` cannot see earlier turns; this extends it across the
    conversation, softly (a logit shift of ``bias``, not a ban), so that the assistant does not
    open with the same stock phrase turn after turn nor repeat a whole earlier reply. Replies are
    tokenised on their own, which covers both the opening tokens and the mid-sentence forms.
    """
    if n < 1 or not replies or bias == 0:
        return []
    grams: Dict[tuple, None] = {}
    for text in replies:
        ids = tokenizer(" ".join(text.split()), add_special_tokens=False)["input_ids"]
        for i in range(len(ids) - n + 1):
            grams[tuple(ids[i : i + n])] = None
    return [[list(g), float(bias)] for g in list(grams)[-limit:]]


def grounding_bias(tokenizer, messages: Sequence[str], bias: float = 1.5, limit: int = 40) -> List[List[Any]]:
    """``sequence_bias`` entries that *encourage* the content words of the user's messages.

    A listener who takes up what was said ("What was his name?" after "my dog died") is what the
    grounding target asks for; beam search on its own prefers the generic "I'm sorry to hear that".
    Each content word (:data:`empathy_nlg.text.STOPWORDS` removed, ≥ 3 letters, no insult or
    profanity: :data:`~empathy_nlg.text.NO_ECHO_PREFIXES`) is encoded as it
    would appear mid-reply (leading space). A word that is one token gets ``bias`` on that token; a
    longer word gets it on its second token once its first one is chosen (finishing a word it
    started), never on a first sub-word alone (" un" would push every "un…" word). ``messages``:
    the newest first; a word of an older message gets half the bias.
    """
    if bias == 0 or not messages:
        return []
    out: Dict[tuple, float] = {}
    for age, text in enumerate(messages):
        weight = float(bias) if age == 0 else float(bias) / 2
        for w in words(text):
            if len(w) < 3 or w in STOPWORDS or w.isdigit() or "'" in w or w.startswith(NO_ECHO_PREFIXES):
                continue
            ids = tuple(tokenizer(" " + w, add_special_tokens=False)["input_ids"])
            key = ids if len(ids) == 1 else ids[:2]
            if key not in out:
                out[key] = weight
            if len(out) >= limit:
                return [[list(k), b] for k, b in out.items()]
    return [[list(k), b] for k, b in out.items()]


def tone_bias(tokenizer, polarity: Optional[str], bias: float = -5.0) -> List[List[Any]]:
    """``sequence_bias`` entries that keep the reply's tone from contradicting the user's news.

    To good news (``polarity == "positive"``) the sympathy words of
    :data:`empathy_nlg.text.SYMPATHY_WORDS` ("sorry", "sad", …) get ``bias``; to bad news the
    celebration words ("awesome", "congrats", …). Each word in its mid-sentence (leading space) and
    sentence-initial (capitalised) forms; a form of several tokens (" condolences", "Oh no") gets
    the bias on its last token once the others are there. Other polarities: none. The reranker's
    polarity guard then chooses among beams that already fit."""
    listed = {"positive": SYMPATHY_WORDS, "negative": CELEBRATION_WORDS}.get(polarity or "")
    if not listed or bias == 0:
        return []
    out: Dict[tuple, float] = {}
    for w in listed:
        for form in (" " + w, w.capitalize(), " " + w.capitalize()):
            ids = tuple(tokenizer(form, add_special_tokens=False)["input_ids"])
            if 1 <= len(ids) <= 3:
                out[ids] = float(bias)
    return [[list(k), b] for k, b in out.items()]


def _pad_list(rows):
    import torch

    width = max(r.shape[0] for r in rows)
    out = torch.zeros(len(rows), width, rows[0].shape[-1], dtype=rows[0].dtype, device=rows[0].device)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return out, mask


def encoder_text(context: Sequence[Utterance], turns: int) -> str:
    """The sentence encoder's view of a context (MIME's and persona-MoEL's context encoders): the last
    ``turns`` turns, newest first, each led by its role."""
    chosen = list(context)[-max(1, turns):] or list(context)
    return " | ".join(f"{u.role}: {u.text}" for u in reversed(chosen)) or "."


def context_token_tensors(encoder, contexts: Sequence[Sequence[Utterance]], turns: int, max_tokens: int, device: str):
    """The frozen encoder's token vectors [B, L, e] and mask [B, L] of :func:`encoder_text` of each
    context, cut at ``max_tokens`` and moved to ``device`` (the input of a paper's context encoder)."""
    hidden, mask, _ = encoder.token_embeddings([encoder_text(c, turns) for c in contexts])
    return hidden[:, :max_tokens].clone().to(device), mask[:, :max_tokens].clone().to(device)


def topk_accuracy(heads, feats: Sequence[Mapping[str, Any]], logits_and_gold, ks: Sequence[int] = (1, 2, 5),
                  batch_size: int = 32) -> Dict[str, float]:
    """Top-k accuracy (percent) of an emotion classifier over ``feats``: ``logits_and_gold(part)``
    gives the logits [B, C] and the gold indices [B] of a batch; ``heads`` run in eval mode, without
    gradient, and get their train/eval mode back."""
    import torch

    hits = {k: 0 for k in ks}
    was = heads.training
    heads.train(False)
    with torch.no_grad():
        for start in range(0, len(feats), batch_size):
            logits, gold = logits_and_gold(feats[start : start + batch_size])
            ranked = logits.argsort(-1, descending=True)
            for k in ks:
                hits[k] += int((ranked[:, :k] == gold.unsqueeze(1)).any(1).sum())
    heads.train(was)
    return {f"top{k}": round(100.0 * hits[k] / max(1, len(feats)), 2) for k in ks}


def masked_mean(x, mask):
    """Mean over positions where ``mask`` is 1 ([B, L, d], [B, L]) → [B, d] (0 for empty rows)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def summed_nll(logits, targets) -> Tuple[float, int]:
    """Summed NLL and number of the non-padding targets (for perplexity)."""
    import torch.nn.functional as F

    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100, reduction="sum")
    return float(nll), int((targets != -100).sum())


def token_nll(logits, targets, weights=None):
    """Mean NLL over non-padding targets; with ``weights`` [V], the FACE-weighted mean."""
    import torch.nn.functional as F

    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_t = targets.reshape(-1)
    nll = F.cross_entropy(flat_logits, flat_t, ignore_index=-100, reduction="none")
    valid = flat_t != -100
    if weights is None:
        return nll[valid].mean() if valid.any() else nll.sum() * 0.0
    w = weights[flat_t.clamp(min=0)] * valid
    return (nll * w).sum() / w.sum().clamp(min=1e-6)


# ----------------------------------------------------------------------------------- the shared base
def prefix_layer(lm: ConditionedBackbone, top_layers: Optional[int]) -> Optional[int]:
    """The decoder layer where a prefix that enters only the top ``top_layers`` layers joins
    (``None``: the prefix is input embeddings)."""
    if not top_layers:
        return None
    if lm.is_seq2seq:
        raise ValueError("prefix_top_layers applies to decoder-only backbones, not to a seq2seq one")
    n = len(lm.decoder_layers())
    if not 1 <= int(top_layers) <= n:
        raise ValueError(f"prefix_top_layers must be between 1 and {n}, got {top_layers}")
    return n - int(top_layers)


class TrainedModel:
    """Backbone + LoRA adapters + a paper's heads: what every trained generator is made of.

    A paper subclasses it and writes only what is its own — ``build_heads`` (its layers), its
    inputs and losses (``loss``, ``reply_nll``), what it adds to ``generator.json``
    (``describe``) and any extra file (``save_extra``/``load_extra``). Construction, the
    adapter (new, or started from another trained model's), saving, loading, the trainable
    parameters and the train/eval switch live here, and so do the training speed-ups (they are in
    :class:`ConditionedBackbone`: bf16 autocast, the LM head on reply positions, LoRA on the top
    layers only).

    ``settings`` is a property: assigning new settings (a run branched off another with an
    ablation switched) hands them to the heads as well when the heads read settings at run time.
    """

    #: the generator's registry name (written to and checked in ``generator.json``)
    name: str = ""
    version: str = ""
    #: the settings dataclass (with ``from_mapping`` and ``variant``)
    settings_type: Any = None
    #: whether :meth:`load` needs the sentence encoder when none is given
    needs_encoder: bool = True

    def __init__(self, settings, backbone, encoder=None, adapter_dir: Optional[Path] = None,
                 lora: Optional[Mapping[str, Any]] = None, trainable: bool = False) -> None:
        self.encoder = encoder
        if adapter_dir is not None:
            self.peft = load_adapter(backbone.model, adapter_dir, trainable=trainable)
        else:
            self.peft = attach_lora(backbone.model, LoraSettings.from_mapping(lora))
        self.lm = ConditionedBackbone(self.peft, backbone.tokenizer, backbone.is_seq2seq, backbone.device)
        self.backbone_name = backbone.name
        self.heads = None
        self.settings = settings
        self.heads = self.build_heads().to(backbone.device)

    @property
    def settings(self):
        return self._settings

    @settings.setter
    def settings(self, value) -> None:
        self._settings = value
        self.lm.prefix_layer = prefix_layer(self.lm, getattr(value, "prefix_top_layers", None))
        if self.heads is not None and hasattr(self.heads, "settings"):
            self.heads.settings = value

    @property
    def device(self) -> str:
        return self.lm.device

    def build_heads(self):
        """The paper's own layers (an ``nn.Module``; none by default)."""
        import torch

        return torch.nn.ModuleDict()

    def trainable_parameters(self):
        return [p for p in list(self.peft.parameters()) + list(self.heads.parameters()) if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        self.peft.train(mode)
        self.heads.train(mode)

    # -- persistence ---------------------------------------------------------------------------
    def describe(self) -> Dict[str, Any]:
        """Extra keys of ``generator.json`` (e.g. the encoder's name)."""
        return {"encoder": self.encoder.name} if self.encoder is not None else {}

    def save_extra(self, folder: Path) -> None:
        """Files of the paper besides adapter and heads (called after they are written)."""

    def load_extra(self, folder: Path, config: Mapping[str, Any]) -> None:
        """Read what :meth:`save_extra` wrote."""

    def save(self, folder: Path, extra: Optional[Mapping[str, Any]] = None, half: bool = False) -> None:
        config = {"generator": self.name, "version": self.version, "variant": self.settings.variant,
                  "settings": asdict(self.settings), "backbone": self.backbone_name, **self.describe(),
                  **dict(extra or {})}
        save_trained(folder, self.peft, self.heads, config, half=half)
        self.save_extra(Path(folder))

    @classmethod
    def from_folder(cls, folder: Path, backbone, encoder, trainable: bool):
        """The model saved in ``folder`` on ``backbone`` (a clear error for another generator's folder)."""
        config = read_trained_config(folder)
        if config.get("generator") != cls.name:
            article = "an" if cls.name[:1] in "aeiou" else "a"
            raise ValueError(f"{folder} holds a {config.get('generator')!r} model, not {article} {cls.name} one")
        model = cls(cls.settings_type.from_mapping(config.get("settings")), backbone, encoder,
                    adapter_dir=Path(folder), trainable=trainable)
        load_heads(folder, model.heads, backbone.device)
        model.load_extra(Path(folder), config)
        return model

    @classmethod
    def load(cls, folder: Path, backbone_path: Optional[str] = None, device: Optional[str] = None,
             dtype: str = "auto", encoder=None, trainable: bool = False):
        """A trained model from ``folder`` (adapter + heads + generator.json) on a fresh backbone."""
        read_trained_config(folder)  # a clear error before loading anything heavy
        backbone = load_base(backbone_path, device=device, dtype=dtype)
        if encoder is None and cls.needs_encoder:
            from empathy_nlg.perception.encoder import SentenceEncoder

            encoder = SentenceEncoder(device=backbone.device)
        model = cls.from_folder(Path(folder), backbone, encoder, trainable)
        model.train(trainable)
        return model


class TrainingRecipe:
    """What ``empathy-nlg train`` needs from a paper module (its ``RECIPE``): the model class, the
    ablation switches, the features it adds and what it prepares before the first step."""

    model_class: Any = TrainedModel
    #: whether the features carry the silver EPITOME labels (``cm``)
    NEEDS_CM: bool = True

    @property
    def name(self) -> str:
        return self.model_class.name

    @property
    def ABLATIONS(self) -> Tuple[str, ...]:  # noqa: N802 (read like the constant it was)
        """The parts ``--ablate`` can switch off: the settings' ``SWITCHES``."""
        return tuple(self.model_class.settings_type.SWITCHES)

    def settings_from(self, values: Optional[Mapping[str, Any]]):
        return self.model_class.settings_type.from_mapping(values)

    def feature_extra(self, settings, config: TrainSettings, encoder, out_dir: Path):
        """``(add(features, progress), key)`` adding the paper's keys to every feature, or ``(None, None)``."""
        return None, None

    def new_model(self, settings, backbone, encoder, lora: Optional[Mapping[str, Any]], adapter_dir: Optional[Path] = None):
        """A new model; with ``adapter_dir`` its LoRA starts from that trained adapter (e.g. the
        ``finetuned`` generator's) and the heads are new."""
        return self.model_class(settings, backbone, encoder, adapter_dir=adapter_dir, lora=lora, trainable=True)

    def load_model(self, folder: Path, backbone, encoder, trainable: bool):
        return self.model_class.from_folder(Path(folder), backbone, encoder, trainable)

    def prepare(self, model, train_feats: Sequence[Mapping[str, Any]], config: TrainSettings, **_: Any) -> None:
        """Anything computed from the training data before the first step (FACE weights, pools)."""

    def validation_extra(self, model, valid_feats: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """Measures of the paper's own parts logged beside each validation perplexity (none by default)."""
        return {}


# ----------------------------------------------------------------------------------- persistence
def load_base(backbone_path: Optional[str], device: Optional[str], dtype: str = "auto"):
    """The frozen base backbone (weights not trainable)."""
    from empathy_nlg.backbone.loader import load_backbone

    bb = load_backbone(backbone_path, device=device, dtype=dtype)
    for p in bb.model.parameters():
        p.requires_grad_(False)
    if bb.is_seq2seq:
        bb.tokenizer.padding_side = "right"
    return bb


def save_trained(folder: Path, peft_model, heads, config: Mapping[str, Any], half: bool = False) -> None:
    """Write ``adapter/`` (PEFT), ``heads.safetensors`` (the paper module) and ``generator.json``
    to ``folder`` atomically (a temporary sibling renamed into place)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    peft_model.save_pretrained(str(tmp / ADAPTER_DIR))
    (tmp / ADAPTER_DIR / "README.md").unlink(missing_ok=True)  # PEFT's empty template; our card is MODEL_CARD.md
    state = {k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}
    save_file(half_floats(state) if half else state, str(tmp / HEADS_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, ensure_ascii=False) + "\n")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def half_floats(state: Mapping[str, Any]) -> Dict[str, Any]:
    """A state dict with its floating-point tensors in fp16 (how served heads are stored)."""
    import torch

    return {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def read_trained_config(folder: Path) -> Dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no trained generator ({CONFIG_FILE} missing); train one with `empathy-nlg train`")
    return json.loads(path.read_text(encoding="utf-8"))


def load_heads(folder: Path, heads, device: str) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / HEADS_FILE), device="cpu")
    own = heads.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    try:
        missing, unexpected = heads.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise ValueError(f"{folder}: heads do not match this model ({str(exc).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise ValueError(f"{folder}: heads do not match this model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    heads.to(device)


def load_adapter(base_model, folder: Path, trainable: bool = False):
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(Path(folder) / ADAPTER_DIR), is_trainable=trainable)


def count_parameters(module) -> Tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


def folder_megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20


def cosine(a, b):
    import torch.nn.functional as F

    return F.cosine_similarity(a, b, dim=-1)


def rank_margin_loss(anchor, positive, negatives, gamma: float):
    """NEC's ranking loss over the ranked list ``[y⁺, y⁻_1, …, y⁻_n]`` (negatives best-ranked first):
    the mean over all pairs i < j of ``max(0, cos(x, y_j) − cos(x, y_i) + γ·(j − i))`` — the
    positive against every negative, and every negative against the lower-ranked ones.
    Returns the loss and the cosines ``[B, 1+n]``."""
    import torch

    cands = torch.cat([positive.unsqueeze(1), negatives], dim=1)  # [B, 1+n, d]
    sims = cosine(anchor.unsqueeze(1), cands)  # [B, 1+n]
    n = sims.shape[1]
    loss = sims.new_zeros(())
    terms = 0
    for i in range(n - 1):
        for j in range(i + 1, n):
            margin = gamma * (j - i)
            loss = loss + torch.relu(sims[:, j] - sims[:, i] + margin).mean()
            terms += 1
    return loss / max(1, terms), sims

