"""Persona-conditioned MoEL: MoEL ("Mixture of Empathetic Listeners", Lin et al. 2019) with the
speaker's persona of PEC ("Towards Persona-Based Empathetic Conversational Models", Zhong et al.
2020), on the pretrained backbone.

MoEL reads the context, predicts the user's emotion distribution, lets one *listener* per emotion
react to the context, and a *meta-listener* decodes from the listeners' outputs softly combined
with the predicted distribution as weights. PEC adds who the speaker is: persona sentences of the
speaker, encoded and fused with the context. Here is each part, where it lives and the adaptation
made to our backbone:

1. **Context encoding** (MoEL's emotion tracker input; as MIME here): the frozen MiniLM of
   perception gives contextual token vectors of the last ``encoder_turns`` turns (newest first,
   each led by its role word, cut at ``max_context_tokens``), projected to the heads' width
   ``D_h`` (``heads_dim``; MoEL's 300 → 256), with learned positions and a learned ``[CTX]`` vector
   in front, through one trainable Transformer layer → ``H``; ``q = H_0`` (MoEL's ``q_h``, its
   ``mean_query: false``).
2. **Emotion tracker and auxiliary loss** (MoEL's ``decoder_key`` and its cross-entropy):
   ``s = W_e q`` over the 32 ED emotions, ``L_emo = CE(s, e_gold)``, always over the 32 labels,
   whatever the listener grouping.
3. **Listeners** — one per *group* of emotions (``listener_groups``):

   * ``emotions`` (default): 32 listeners, one per ED emotion — MoEL's own choice (its paper
     visualises the weights of 32 listeners). The groups are :data:`empathy_nlg.taxonomy.EMOTIONS`
     themselves, no new taxonomy;
   * ``polarity``: MIME's 13 positive / 19 negative groups (:mod:`empathy_nlg.taxonomy`, the one
     home of groupings) — 2 listeners, for data-poor runs (each listener of 32 sees ≈ 1/32 of ED).

   (The seed text has MoEL and PEC in its literature review only; it defines no emotion grouping,
   so the "16 groups" the issue mentions have no source here and are not invented.)
   *Adaptation*: MoEL's listener is a whole Transformer decoder layer over the response so far;
   32 extra decoder layers on a 135M backbone would multiply the cost of every step. Each
   listener here is a *small expert adapter* that writes ``listener_prefix`` prefix vectors from
   the context and persona, ``V_k(x) = U_k tanh(A_k x + a_k) + u_k`` (rank ``listener_rank``,
   ``x = [q ; p]``, the bias ``u_k`` being the listener's own prefix vectors, as MIME/NEC/IMAGINE
   give their conditioning to the shared backbone) — not one LoRA per listener: a per-example
   mixture of 32 LoRA deltas cannot be merged into the weights at load (the serving fast path of
   every trained generator), would need hooks in every adapted projection, and would cost 32 ×
   0.46 M parameters; the 33 listeners here hold ≈ 0.85 M together and leave the shared backbone,
   its shared LoRA (started from the ``finetuned`` adapter) and its merged, bf16, shared-prefill
   serving untouched. The K listeners run as one batched module (:class:`ListenerBank`).
   **Shared listener** (MoEL's ``basic_learner``): one more listener that reacts to every example.
4. **Meta-listener** (MoEL's ``MulDecoder``): ``V_M = V_shared + Σ_k w_k V_k`` — the soft
   combination, each listener's output scaled by its weight, so each listener's parameters get
   gradient in proportion to its weight (a zero weight: exactly none; tested). MoEL's meta-listener
   decodes from ``V_M`` with further decoder layers; *adaptation*: ``V_M`` is projected to the
   backbone's width and given to the backbone as prefix vectors (normalised to the scale of the
   residual stream where they enter: the top ``prefix_top_layers`` layers), so the backbone with the
   shared LoRA is the meta-listener's decoder, reading ``[p ; V_M]`` in front of the dialogue prompt.
   **Weights** ``w`` (the emotion distribution pooled to the groups, ``w_g = Σ_{e∈g} P(e)``, then
   MoEL's top-``top_k`` sparsity: the ``top_k`` most likely emotions kept and renormalised):

   * *serving*: perception's emotion distribution of the request (the engine's emotion model,
     49.8 % on ED valid — better than MoEL's own tracker); without perception, the tracker's;
   * *training*: MoEL's scheduled oracle — with probability ``1e-4 + (1 − 1e-4)·exp(−t/S)`` at step
     ``t`` (``oracle_schedule`` = S, MoEL's ``--schedule``) an example's weights are the *gold*
     emotion's one-hot distribution, else the tracker's own top-k distribution (with gradient, as in
     MoEL). Early steps train each listener on its own emotion; later ones train the mixture on
     soft weights, as serving sees them. Validation perplexity uses the tracker's weights.
5. **Persona** (PEC). The speaker's persona sentences are encoded with the same frozen MiniLM
   (sentence embeddings) and mean-pooled, then ``p = tanh(W_p · pooled)``; without any sentence, a
   learned "no persona" vector. *Adaptation*: PEC's CoBERT co-attends persona and context for
   response *selection*; here ``p`` enters the conditioning twice — as the listeners' input
   (``x = [q ; p]``: each listener reacts to who is speaking) and as a prefix position of its own.
   **In words too** (``persona_in_prompt``; off in the served v1, tried and measured in the model
   card): a pooled vector does not make a 135M decoder *say* "nurse" or "Biscuit" (v1 used a
   remembered fact in 0 of 32 relevant probe turns), so the same sentences can also be written into
   the prompt's system message
   (:func:`persona_system_text`, kept whole when a long turn cuts the prompt) — PEC's co-attention of
   persona and context becomes the decoder's own attention over both. A model trained with it learns
   when to use them from the ED replies that do — few; ``data.persona_share`` selects them and moves
   the fact out of the user's turn into the persona, as a fact from an earlier session reaches the
   prompt at serving (:func:`empathy_nlg.training.features.persona_selection`).
   Persona sentences: at serving ``request.persona`` (the engine's persona memory in SQL), split
   into sentences, the newest ``max_persona_sentences`` kept (the generator's
   ``persona_from_context`` option mines the context when the request has none: the evaluation
   harness); in training, PEC is not available offline, so each ED example's speaker's persona is
   mined from their own first-person statements in the conversation so far with the project's
   :class:`~empathy_nlg.persona.PersonaExtractor` (:func:`empathy_nlg.training.features.mine_persona`;
   the feature builder logs how many examples get at least one sentence).

Loss: ``γ·NLL + α·L_emo`` with α = γ = 1 (``loss_weights``: ``gen``, ``emotion``) — MoEL's.

Ablations (``--ablate PART``, switches that also hold at serving time):

* ``persona: false`` — no persona vector: no persona prefix position, the listeners' persona input
  is zero, the sentences are not even encoded: the output does not depend on the persona;
* ``experts: false`` — a single shared listener: ``V_M = V_shared``, the weights are ignored
  (MoEL's multi-task Transformer baseline, with the tracker's loss still trained).

``custom.generation`` reports ``listener_weights`` (group → weight, the non-zero ones, largest
first) and where they came from, ``persona_sentences`` (what was encoded) and their source, and the
tracker's top emotions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from empathy_nlg.datasets import Utterance
from empathy_nlg.generators import conditioned as C
from empathy_nlg.generators.base import GenerationRequest
from empathy_nlg.generators.trained import Inputs, TrainedGenerator
from empathy_nlg.paths import ARTIFACTS_DIR
from empathy_nlg.settings import TrainSettings
from empathy_nlg.taxonomy import EMOTIONS, NEGATIVE_EMOTIONS, POSITIVE_EMOTIONS
from empathy_nlg.text import split_sentences

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = ARTIFACTS_DIR / "generators" / "persona_moel"
VERSION = "persona_moel-v1"
#: the listener groupings (see the module docstring), built from the taxonomy's label sets
GROUPINGS: Tuple[str, ...] = ("emotions", "polarity")
#: MoEL's floor of the oracle probability
ORACLE_FLOOR = 1e-4


def listener_groups(grouping: str) -> Dict[str, List[int]]:
    """Group name → the emotion ids (in :data:`EMOTIONS` order) of each listener of ``grouping``."""
    if grouping == "emotions":
        return {e: [i] for i, e in enumerate(EMOTIONS)}
    if grouping == "polarity":
        return {"positive": [EMOTIONS.index(e) for e in POSITIVE_EMOTIONS],
                "negative": [EMOTIONS.index(e) for e in NEGATIVE_EMOTIONS]}
    raise ValueError(f"persona_moel listener_groups must be one of {', '.join(GROUPINGS)}, got {grouping!r}")


def pooling_matrix(grouping: str):
    """``[32, K]``: 1 where emotion e belongs to listener k's group (``w = P @ M``)."""
    groups = listener_groups(grouping)
    m = torch.zeros(len(EMOTIONS), len(groups))
    for k, ids in enumerate(groups.values()):
        m[ids, k] = 1.0
    return m


def top_k_distribution(probs, k: int):
    """MoEL's sparsity: the ``k`` most likely entries of each row kept and renormalised (0: all)."""
    if k and k < probs.shape[-1]:
        values, idx = probs.topk(k, dim=-1)
        probs = torch.zeros_like(probs).scatter(-1, idx, values)
    return probs / probs.sum(-1, keepdim=True).clamp(min=1e-12)


def oracle_probability(step: int, schedule: float) -> float:
    """MoEL's chance of training step ``step`` using the gold emotion's weights (0: never)."""
    if not schedule or schedule <= 0:
        return 0.0
    return ORACLE_FLOOR + (1.0 - ORACLE_FLOOR) * math.exp(-float(step) / float(schedule))


def persona_sentences(persona: Optional[str], limit: int) -> List[str]:
    """The sentences of the engine's persona text (facts joined as sentences, newest last, by
    :func:`empathy_nlg.persona.persona_text`), final punctuation dropped (as the extractor writes
    facts), the newest ``limit`` kept. A fact with an abbreviation inside ("Dr. Li") is split there:
    both halves are still encoded."""
    if not persona or not str(persona).strip() or limit <= 0:
        return []
    parts = [p.strip().rstrip(".!").strip() for p in split_sentences(" ".join(str(persona).split()))]
    return [p for p in parts if p][-limit:]


#: how the persona sentences are put in words in the prompt's system message (``persona_in_prompt``)
PERSONA_LEAD = "What they told you about themselves before:"


def persona_system_text(sentences: Sequence[str]) -> str:
    """The persona sentences as one line for the prompt's system message ("" without any)."""
    said = [" ".join(str(x).split()).rstrip(".!") for x in sentences if str(x).strip()]
    return f"{PERSONA_LEAD} {'. '.join(said)}." if said else ""


@dataclass
class PersonaMoelSettings(C.TrainedSettings):
    """Architecture and ablation switches (saved with the trained model)."""

    NAME: ClassVar[str] = "persona_moel"
    SWITCHES: ClassVar[Tuple[str, ...]] = ("persona", "experts")

    context_turns: int = 2
    max_prompt_tokens: int = 128
    persona: bool = True
    experts: bool = True
    #: emotions (32 listeners, MoEL) | polarity (MIME's 2 groups)
    listener_groups: str = "emotions"
    #: prefix vectors each listener writes (and the meta-listener passes on)
    listener_prefix: int = 4
    #: the width of each listener's hidden layer
    listener_rank: int = 16
    #: MoEL's top-k of the weights (0: every listener)
    top_k: int = 5
    #: MoEL's --schedule: P(gold weights at step t) = 1e-4 + (1 - 1e-4)·exp(-t/S); 0: the tracker's always
    oracle_schedule: float = 10000.0
    #: the newest persona sentences encoded (the engine's persona.max_facts is 5)
    max_persona_sentences: int = 5
    #: the persona sentences also in words, in the prompt's system message (:func:`persona_system_text`);
    #: the system message survives a prompt cut (``encode_prompt(keep_system=True)``)
    persona_in_prompt: bool = False
    #: the turns and MiniLM tokens the context encoder reads
    encoder_turns: int = 4
    max_context_tokens: int = 48
    heads_dim: int = 256
    encoder_heads: int = 4
    encoder_ff: int = 512
    #: the prefix joins the residual stream at the input of the top N decoder layers (see NEC)
    prefix_top_layers: Optional[int] = None
    num_beams: int = 4
    loss_weights: Dict[str, float] = field(default_factory=lambda: {"gen": 1.0, "emotion": 1.0})

    @classmethod
    def from_mapping(cls, values: Optional[Mapping[str, Any]]) -> "PersonaMoelSettings":
        s = super().from_mapping(values)
        listener_groups(s.listener_groups)  # a clear error for an unknown grouping
        for name in ("listener_prefix", "listener_rank", "heads_dim", "max_context_tokens", "encoder_turns"):
            if int(getattr(s, name)) < 1:
                raise ValueError(f"persona_moel {name} must be at least 1, got {getattr(s, name)}")
        for name in ("top_k", "max_persona_sentences"):
            if int(getattr(s, name)) < 0:
                raise ValueError(f"persona_moel {name} must be at least 0, got {getattr(s, name)}")
        if float(s.oracle_schedule) < 0:
            raise ValueError(f"persona_moel oracle_schedule must be at least 0, got {s.oracle_schedule}")
        if s.prefix_top_layers is not None and int(s.prefix_top_layers) < 1:
            raise ValueError(f"persona_moel prefix_top_layers must be at least 1 (or null), got {s.prefix_top_layers}")
        unknown = set(s.loss_weights) - {"gen", "emotion"}
        if unknown:
            raise ValueError(f"persona_moel loss_weights: unknown terms {sorted(unknown)} (gen, emotion)")
        return s

    @property
    def groups(self) -> Tuple[str, ...]:
        return tuple(listener_groups(self.listener_groups))


# ----------------------------------------------------------------------------------- the module
class ListenerBank(nn.Module):
    """``K`` listeners as one batched module: listener ``k`` maps ``x ∈ R^inp`` to ``n`` vectors of
    ``R^D``, ``V_k(x) = U_k tanh(A_k x + a_k) + u_k``. Listener ``k``'s parameters are the ``[k]``
    slices of :attr:`down`, :attr:`down_b`, :attr:`up` and :attr:`up_b`."""

    def __init__(self, k: int, inp: int, rank: int, n: int, dim: int) -> None:
        super().__init__()
        self.k, self.n, self.dim = k, n, dim
        self.down = nn.Parameter(torch.randn(k, inp, rank) * inp ** -0.5)
        self.down_b = nn.Parameter(torch.zeros(k, rank))
        self.up = nn.Parameter(torch.randn(k, rank, n * dim) * rank ** -0.5 * 0.1)
        self.up_b = nn.Parameter(torch.randn(k, n * dim) * 0.02)  # each listener's own prefix vectors

    def forward(self, x):
        """``x`` [B, inp] → every listener's output [B, K, n, D]."""
        h = torch.tanh(torch.einsum("bi,kir->bkr", x, self.down) + self.down_b)
        out = torch.einsum("bkr,kro->bko", h, self.up) + self.up_b
        return out.view(x.shape[0], self.k, self.n, self.dim)


@dataclass
class MoelOutput:
    """What :meth:`PersonaMoelHeads.condition` computes for a batch."""

    prefixes: List[Any]       # [P_i, d] per row: [p ;] V_M
    emotion_logits: Any       # [B, 32]: the emotion tracker
    weights: Any              # [B, K]: the meta-listener's weights (what the experts were scaled by)
    has_persona: Any          # [B] bool: a persona sentence was encoded (else the "no persona" vector)


class PersonaMoelHeads(nn.Module):
    """The emotion tracker, persona encoder, listeners and meta-listener around the backbone (see
    the module docstring). ``settings`` is read at every forward, never captured (an ablation
    switched on a branched run reaches the heads); the listener grouping is architecture."""

    def __init__(self, settings: PersonaMoelSettings, encoder_dim: int, hidden: int, prefix_rms: float) -> None:
        super().__init__()
        self.settings = settings
        D = settings.heads_dim
        heads_n = next(h for h in (settings.encoder_heads, 4, 2, 1) if D % h == 0)
        self.inp = nn.Linear(encoder_dim, D)
        self.ctx_token = nn.Parameter(torch.randn(D) * 0.02)
        self.pos = nn.Embedding(settings.max_context_tokens + 1, D)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.encoder = nn.TransformerEncoderLayer(D, heads_n, settings.encoder_ff, dropout=0.1, batch_first=True,
                                                  norm_first=True)
        self.emotion = nn.Linear(D, len(EMOTIONS), bias=False)  # MoEL's decoder_key over the 32 emotions
        self.persona_proj = nn.Linear(encoder_dim, D)
        self.no_persona = nn.Parameter(torch.randn(D) * 0.02)
        groups = listener_groups(settings.listener_groups)
        self.register_buffer("pool", pooling_matrix(settings.listener_groups), persistent=False)
        self.experts = ListenerBank(len(groups), 2 * D, settings.listener_rank, settings.listener_prefix, D)
        self.shared = ListenerBank(1, 2 * D, settings.listener_rank, settings.listener_prefix, D)
        self.prefix_proj = nn.Linear(D, hidden)
        self.prefix_norm = nn.LayerNorm(hidden)
        with torch.no_grad():  # the scale of where the prefix enters (input embeddings or a layer's stream)
            self.prefix_norm.weight.fill_(prefix_rms)

    # -- parts -------------------------------------------------------------------------------------
    def context(self, tokens, mask):
        """MiniLM token vectors [B, L, e] + mask → ``q`` [B, D_h] and the tracker's logits [B, 32]."""
        B, L, _ = tokens.shape
        x = torch.cat([self.ctx_token.expand(B, 1, -1), self.inp(tokens)], dim=1)
        x = x + self.pos(torch.arange(L + 1, device=tokens.device)).unsqueeze(0)
        full = torch.cat([mask.new_ones(B, 1), mask], dim=1)
        q = self.encoder(x, src_key_padding_mask=full == 0)[:, 0]
        return q, self.emotion(q)

    def persona(self, pooled, has):
        """Pooled persona sentence embeddings [B, e] and whether a row has any [B] → ``p`` [B, D_h]
        (the learned "no persona" vector where it has none)."""
        p = torch.tanh(self.persona_proj(pooled))
        return torch.where(has.view(-1, 1), p, self.no_persona.expand_as(p))

    def emotion_distribution(self, logits):
        """The tracker's top-k emotion distribution [B, 32] (MoEL: softmax over the top-k logits)."""
        return top_k_distribution(torch.softmax(logits, dim=-1), self.settings.top_k)

    def group_weights(self, distribution):
        """An emotion distribution [B, 32] pooled to the listeners' groups → [B, K]."""
        return distribution @ self.pool.to(distribution.dtype)

    def condition(self, q, logits, pooled, has, weights) -> MoelOutput:
        """The meta-listener's prefix from ``q``, the persona (``pooled``, ``has``) and ``weights``
        [B, K] (ignored without experts)."""
        s = self.settings
        if s.persona:
            p = self.persona(pooled, has)
        else:  # ablated: nothing of the persona reaches the conditioning
            p = q.new_zeros(q.shape)
            has = torch.zeros_like(has)
        x = torch.cat([q, p], dim=-1)
        mixed = self.shared(x)[:, 0]  # MoEL's shared listener (basic learner)
        if s.experts:
            if weights.shape != (q.shape[0], self.experts.k):
                raise ValueError(f"listener weights of shape {tuple(weights.shape)} for {q.shape[0]} rows and "
                                 f"{self.experts.k} listeners")
            mixed = mixed + (weights.to(q.dtype).view(q.shape[0], -1, 1, 1) * self.experts(x)).sum(1)
        rows = torch.cat([p.unsqueeze(1), mixed], dim=1) if s.persona else mixed
        body = self.prefix_norm(self.prefix_proj(rows))
        return MoelOutput(prefixes=list(body.unbind(0)), emotion_logits=logits, weights=weights, has_persona=has)

    def forward(self, ctx_tok, ctx_mask, pooled, has, weights=None) -> MoelOutput:
        """The whole conditioning; ``weights`` [B, K] (``None``: the tracker's own distribution)."""
        q, logits = self.context(ctx_tok, ctx_mask)
        if weights is None:
            weights = self.group_weights(self.emotion_distribution(logits))
        return self.condition(q, logits, pooled, has, weights)


# ----------------------------------------------------------------------------------- the model
class PersonaMoelModel(C.TrainedModel):
    """Backbone + adapters + the MoEL heads + the frozen MiniLM encoder (context and persona)."""

    name = "persona_moel"
    version = VERSION
    settings_type = PersonaMoelSettings

    def build_heads(self) -> PersonaMoelHeads:
        return PersonaMoelHeads(self.settings, self.encoder.dim, self.lm.hidden_size,
                                self.lm.stream_rms(self.lm.prefix_layer))

    def context_tensors(self, contexts: Sequence[Sequence[Utterance]]):
        s = self.settings
        return C.context_token_tensors(self.encoder, contexts, s.encoder_turns, s.max_context_tokens, self.device)

    def persona_tensors(self, personas: Sequence[Sequence[str]]):
        """The mean MiniLM sentence embedding of each row's persona sentences [B, e] and whether it
        has any [B] (nothing is encoded when the persona is ablated)."""
        pooled = torch.zeros(len(personas), self.encoder.dim)
        has = torch.zeros(len(personas), dtype=torch.bool)
        flat = [s for p in personas for s in p] if self.settings.persona else []
        if flat:
            emb = torch.from_numpy(self.encoder.encode(flat)).float()
            start = 0
            for i, sentences in enumerate(personas):
                if sentences:
                    pooled[i] = emb[start : start + len(sentences)].mean(0)
                    has[i] = True
                    start += len(sentences)
        return pooled.to(self.device), has.to(self.device)

    def prompts(self, contexts: Sequence[Sequence[Utterance]],
                personas: Optional[Sequence[Sequence[str]]] = None) -> List[List[int]]:
        """The chat prompts; with ``persona_in_prompt`` (and the persona not ablated) each row's persona
        sentences are in its system message, which a cut keeps."""
        s = self.settings
        words = bool(s.persona and s.persona_in_prompt)
        personas = personas if personas is not None else [[] for _ in contexts]
        return [C.encode_prompt(self.lm.tokenizer,
                                C.prompt_messages(c, s.context_turns, persona_system_text(p) if words else ""),
                                s.max_prompt_tokens, keep_system=words)
                for c, p in zip(contexts, personas)]

    def conditioning(self, contexts: Sequence[Sequence[Utterance]], personas: Sequence[Sequence[str]],
                     weights=None) -> MoelOutput:
        """The heads on ``contexts`` and their persona sentences; ``weights`` [B, K] (``None``: the
        tracker's)."""
        tok, mask = self.context_tensors(contexts)
        pooled, has = self.persona_tensors(personas)
        return self.heads(tok, mask, pooled, has, weights)

    # -- training ------------------------------------------------------------------------------
    def _batch(self, batch: Sequence[Mapping[str, Any]]):
        contexts = [[Utterance(r, t) for r, t in f["context"]] for f in batch]
        limit = self.settings.max_persona_sentences
        personas = [list(f.get("persona") or [])[-limit:] if limit > 0 else [] for f in batch]
        gold = torch.tensor([EMOTIONS.index(f["emotion"]) for f in batch], device=self.device)
        return contexts, personas, gold

    def training_weights(self, logits, gold, step: int):
        """MoEL's scheduled oracle: per example, the gold emotion's one-hot distribution with
        :func:`oracle_probability`, else the tracker's top-k distribution; pooled to the groups.
        Draws from torch's global generator (a resumed run replays it). Returns (weights [B, K],
        the share of gold rows)."""
        heads = self.heads
        dist = heads.emotion_distribution(logits)
        chance = oracle_probability(step, self.settings.oracle_schedule)
        share = 0.0
        if chance > 0:
            use_gold = (torch.rand(len(gold)) < chance).to(logits.device)
            one_hot = torch.nn.functional.one_hot(gold, len(EMOTIONS)).to(dist.dtype)
            dist = torch.where(use_gold.view(-1, 1), one_hot, dist)
            share = float(use_gold.float().mean())
        return heads.group_weights(dist), share

    def loss(self, batch: Sequence[Mapping[str, Any]], step: int = 0):
        """``γ·NLL + α·CE_emotion`` (MoEL's loss); returns (loss, parts)."""
        import torch.nn.functional as F

        s = self.settings
        w = s.loss_weights
        contexts, personas, gold = self._batch(batch)
        tok, mask = self.context_tensors(contexts)
        pooled, has = self.persona_tensors(personas)
        q, logits = self.heads.context(tok, mask)
        weights, share = self.training_weights(logits, gold, step)
        out = self.heads.condition(q, logits, pooled, has, weights)
        replies = [C.encode_reply(self.lm.tokenizer, f["reference"], s.max_reply_tokens, self.lm.is_seq2seq) for f in batch]
        lm_logits, targets, _ = self.lm.forward(out.prefixes, self.prompts(contexts, personas), replies)
        parts = {"gen": C.token_nll(lm_logits, targets), "emotion": F.cross_entropy(logits, gold)}
        total = w.get("gen", 1.0) * parts["gen"] + w.get("emotion", 1.0) * parts["emotion"]
        logged = {k: float(v.detach()) for k, v in parts.items()}
        if s.experts:
            logged["oracle"] = share
        return total, logged

    def reply_nll(self, batch: Sequence[Mapping[str, Any]]):
        """Summed NLL and token count of the gold replies (validation perplexity), weighted by the
        tracker's own distribution (no oracle) — what serving without perception sees."""
        contexts, personas, _ = self._batch(batch)
        out = self.conditioning(contexts, personas)
        replies = [C.encode_reply(self.lm.tokenizer, f["reference"], self.settings.max_reply_tokens, self.lm.is_seq2seq)
                   for f in batch]
        return self.lm.reply_nll(out.prefixes, self.prompts(contexts, personas), replies)

    def emotion_accuracy(self, feats: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1, 2, 5),
                         batch_size: int = 32) -> Dict[str, float]:
        """Top-k accuracy of the emotion tracker against the ED labels (MoEL reports its accuracy)."""
        def logits_and_gold(part):
            contexts, _, gold = self._batch(part)
            return self.heads.context(*self.context_tensors(contexts))[1], gold

        return C.topk_accuracy(self.heads, feats, logits_and_gold, ks, batch_size)


# ----------------------------------------------------------------------------------- serving
class PersonaMoelGenerator(TrainedGenerator):
    """Serves a trained persona-conditioned MoEL (``model_dir``; default: the committed model).

    Option (its config section): ``persona_from_context`` — when a request carries no persona
    (persona memory off, or the evaluation harness, which has no SQL), mine the persona sentences
    from the user's turns of the context as training did (default false: the engine's persona
    memory is the source, and switching it off means no persona)."""

    name = "persona_moel"
    needs_perception = True
    model_class = PersonaMoelModel
    default_model_dir = DEFAULT_MODEL_DIR

    def configure(self, persona_from_context: bool = False) -> None:
        if not isinstance(persona_from_context, bool):
            raise ValueError(f"persona_moel: persona_from_context must be true or false, got {persona_from_context!r}")
        self.persona_from_context = persona_from_context
        self._extractor = None

    def version_suffix(self) -> str:
        return "+ctxpersona" if self.persona_from_context else ""

    def _persona(self, request: GenerationRequest) -> Tuple[List[str], str]:
        """The request's persona sentences and their source (``request``, ``context``, ``none``,
        ``ablated``)."""
        s = self.settings
        if not s.persona:
            return [], "ablated"
        found = persona_sentences(request.persona, s.max_persona_sentences)
        if found:
            return found, "request"
        if self.persona_from_context and s.max_persona_sentences > 0:
            from empathy_nlg.persona import PersonaExtractor, unique_facts

            if self._extractor is None:
                self._extractor = PersonaExtractor()
            said = [u.text for u in request.context if u.role == "speaker"]
            facts = unique_facts(f for found_facts in self._extractor.extract_many(said) for f in found_facts)
            mined = [f.text for f in facts][-s.max_persona_sentences:]
            if mined:
                return mined, "context"
        return [], "none"

    def _distributions(self, requests: Sequence[GenerationRequest], logits):
        """Per request: perception's emotion distribution (top-k, renormalised), else the tracker's."""
        own = self.model.heads.emotion_distribution(logits)
        rows, sources = [], []
        for i, r in enumerate(requests):
            if r.perception is not None and r.perception.emotion_probs:
                probs = torch.tensor([[float(r.perception.emotion_probs.get(e, 0.0)) for e in EMOTIONS]],
                                     dtype=own.dtype, device=own.device)
                if float(probs.sum()) > 0:
                    rows.append(top_k_distribution(probs, self.settings.top_k)[0])
                    sources.append("perception")
                    continue
            rows.append(own[i])
            sources.append("classifier")
        return torch.stack(rows), sources

    def inputs(self, requests: Sequence[GenerationRequest]) -> Inputs:
        s = self.settings
        model = self.model
        heads = model.heads
        contexts = [r.context for r in requests]
        personas, persona_sources = zip(*(self._persona(r) for r in requests)) if requests else ((), ())
        tok, mask = model.context_tensors(contexts)
        pooled, has = model.persona_tensors(personas)
        q, logits = heads.context(tok, mask)
        dist, sources = self._distributions(requests, logits)
        weights = heads.group_weights(dist)
        out = heads.condition(q, logits, pooled, has, weights)
        own = torch.softmax(logits, dim=-1)
        groups = s.groups
        details = []
        for i, _request in enumerate(requests):
            listener = {}
            if s.experts:
                order = weights[i].argsort(descending=True).tolist()
                listener = {groups[k]: round(float(weights[i, k]), 4) for k in order if float(weights[i, k]) > 0}
            top = own[i].argsort(descending=True)[:3].tolist()
            details.append({
                "listener_weights": listener,
                "listeners": f"{len(groups)} {s.listener_groups} + shared" if s.experts else "shared only",
                "weights_source": sources[i] if s.experts else "ignored",
                "persona_sentences": list(personas[i]),
                "persona_source": persona_sources[i],
                "persona_in_prompt": bool(s.persona and s.persona_in_prompt and personas[i]),
                "emotion_tracker": [{"emotion": EMOTIONS[k], "p": round(float(own[i, k]), 3)} for k in top],
                "variant": s.variant,
            })
        return Inputs(prefixes=out.prefixes, prompts=model.prompts(contexts, personas), details=details)


# ----------------------------------------------------------------------------------- training
class PersonaMoelRecipe(C.TrainingRecipe):
    """What ``empathy-nlg train --generator persona_moel`` needs from this module."""

    model_class = PersonaMoelModel
    NEEDS_CM = False  # MoEL has no communication-mechanism signal

    def feature_extra(self, settings: PersonaMoelSettings, config: TrainSettings, encoder, out_dir: Path):
        """Adds ``persona`` (the speaker's mined persona sentences) to every feature — also for the
        persona ablation, so that ablation runs share the features folder."""
        from empathy_nlg.training import features as FE

        def add(feats: List[Dict[str, Any]], progress: bool) -> None:
            FE.mine_persona(feats, progress=progress)

        return add, {"persona": FE.PERSONA_MINING, "max": FE.MAX_MINED_PERSONA}

    def prepare(self, model: PersonaMoelModel, train_feats: Sequence[Mapping[str, Any]], config: TrainSettings,
                **_: Any) -> None:
        """Logs how many training examples have a mined persona (also when the features were cached)."""
        mined = [f for f in train_feats if "persona" in f]  # the examples this run trains (features.needed)
        with_persona = sum(1 for f in mined if f["persona"])
        log.info("persona_moel: %d of %d training examples (%.1f %%) have at least one persona sentence%s%s",
                 with_persona, len(mined), 100.0 * with_persona / max(1, len(mined)),
                 f" (the {len(mined)} this run still trains, of {len(train_feats)})" if len(mined) < len(train_feats) else "",
                 "" if model.settings.persona else " (persona ablated: not used)")

    def validation_extra(self, model: PersonaMoelModel, valid_feats: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """Logged beside the validation perplexity: the emotion tracker's top-1/2/5 accuracy."""
        return {"emotion_acc": model.emotion_accuracy(valid_feats)}


RECIPE = PersonaMoelRecipe()
