"""MIME ("MIMicking Emotions for Empathetic Response Generation", Majumder et al. 2020) on a
pretrained backbone.

MIME answers a negative context with mostly negative but partly positive emotion (and a
positive one mostly positively), and samples the response emotion so that different draws give
different but fitting replies. Here is each part of the paper's section 3, the equation it stands
for and the adaptation made:

1. **Context encoding** (eq. 1–3). The paper embeds the concatenated context with word +
   position + speaker embeddings and runs a Transformer encoder with a ``[CTX]`` token in front;
   ``c = H_0``. Here the frozen MiniLM of perception gives contextual token vectors of the
   context (GloVe's role: pretrained, not trained here), newest turn first, each turn led by its
   role word (the speaker embedding's role) — so truncation at ``max_context_tokens`` drops the
   oldest words, not the user's last message — projected to the heads' width ``D_h``
   (``heads_dim``, the paper's 300 → 256 here), with learned positions and a learned ``[CTX]``
   vector in front, through one trainable Transformer layer → ``H ∈ R^{(k+1)×D_h}``, ``c = H_0``.
2. **Emotion classification** (eq. 4–6): ``s = E_ε W_ε c``, ``P = softmax(s)``,
   ``L_cls = −log P[e]`` with the 32 emotion embeddings ``E_ε ∈ R^{32×D_h}`` shared with the
   response-emotion pooling (eq. 10), as in the paper. Serving: perception's emotion decides the
   user's polarity group (its summed group probability); without perception this head does.
3. **Emotion grouping** (Table 1): the 13 positive / 19 negative emotions of
   :mod:`empathy_nlg.taxonomy` (the one home of MIME's groups).
4. **Response-emotion sampling** (eq. 7–15): ``c' = ReLU(FC_sample(c))``,
   ``μ_g = FC_μg(c')``, ``σ_g = exp(0.5·FC_σg(c'))``, ``z_g = μ_g + r ⊙ σ_g``,
   ``d_g = softmax(FC_dg(z_g)) ∈ R^{n_g}``, ``e_g = d_g E_εg`` for ``g ∈ {pos, neg}``.
   **ELBO** (eq. 16–17): the approximate posterior ``Q(z_g | ·, C)`` is the same network on
   ``[c ; y]``. *Adaptation*: the paper writes ``e_g`` concatenated to ``c`` (``e_g`` is itself
   computed from ``z_g``); ED has no response-emotion label, so the posterior sees the gold reply
   instead — ``y`` = its MiniLM mean-pooled vector projected to ``D_h`` — and the reconstruction
   term ``−E_Q[log P(e_g | z_g, C)]`` is the cross-entropy of ``d_g`` (from the posterior sample)
   against a *silver* response-emotion distribution: perception's emotion head on the gold reply,
   restricted to group ``g`` and renormalised (feature ``reply_emotion``). ``L_g^ELBO`` =
   ``KL[Q ‖ P] + CE``, both groups summed. Training samples from the posterior
   (reparameterised), serving from the prior: ``z_g = μ_g + temperature · r ⊙ σ_g``.
5. **Emotion mimicry** (eq. 18–19): ``m = e_pos`` if the user's emotion is positive else
   ``e_neg``; ``m̃`` is the other group's. Training uses the gold ED label's group.
6. **Response-emotion-refined context** (eq. 20–23): ``H_resp = [H_i ⊕ m]``,
   ``H̃_resp = [H_i ⊕ m̃]`` for the context words ``i = 1..k``, each through the same
   ``TR_Enc^resp`` (a linear ``2D_h → D_h`` then one Transformer layer) → ``M``, ``M̃``.
7. **Fusion** (eq. 24–27): ``M' = [M_i ⊕ M̃_i]``, ``M_contrib = σ(FC_contrib(M'))``,
   ``M_adjust = M_contrib ⊙ M'``, ``M_fused = FC_fused(M_adjust) ∈ R^{k×D_h}``. The *mimicry
   mixture weight* reported per reply is the mean gate over ``M``'s half divided by the sum of the
   two halves' means (1.0: only the mimicking representation reaches the decoder).
8. **Response decoding** (eq. 28–31). *Adaptation*: the paper's Transformer decoder attends to
   ``M_fused`` as key and value; here the decoder is the pretrained backbone with LoRA adapters
   and the attention to ``M_fused`` is realised as *prefix vectors* (as IMAGINE and NEC do):
   ``[W_p m ; W_p m̃ ; W_p M_fused]``, normalised to the scale of the residual stream where they
   enter — the top ``prefix_top_layers`` layers (the ``finetuned`` adapter's), so a training step
   runs the lower layers forward only — in front of the dialogue prompt (the last turns as chat
   messages: the backbone also reads what the user just said).

Loss (eq. 32): ``α·L_cls + β·(L_pos^ELBO + L_neg^ELBO) + γ·L_resp`` with α = β = γ = 1
(``loss_weights``: ``emotion``, ``elbo``, ``gen``); the KL term can be warmed up over
``kl_warmup_steps`` (0 by default: the paper's plain sum).

Ablations (the paper's section 5.2, Table 5; ``--ablate PART``, training-config switches that
also hold at serving time):

* ``mimicry: false`` — ``e_pos`` and ``e_neg`` go to eq. 20 and 21 directly, whatever the user's
  polarity (the paper's "passing ``e_g`` directly");
* ``grouping: false`` — one latent and one distribution over all 32 emotions (``d ∈ R^32``),
  ``m = m̃ = e``; with a single group mimicry has nothing to choose;
* ``stochastic: false`` — ``z_g = μ_g`` (no posterior, no KL, no noise at serving; the
  reconstruction cross-entropy still trains ``d_g``) — the paper's "MIME w/o STC" of Table 3.

Serving: ``samples`` draws of the response emotion per request, each decoded with
``num_beams // samples`` beams (at least 1); every draw's beams are candidates for the engine's
conversation reranker. ``custom.generation`` reports the polarity group, the mimicry mixture
weight and, per draw, the sampled distribution's top emotions and the emotion embeddings nearest
to the mixed response-emotion vector.
"""

from __future__ import annotations

import logging
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
from empathy_nlg.taxonomy import EMOTIONS, NEGATIVE_EMOTIONS, POSITIVE_EMOTIONS, polarity_of

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = ARTIFACTS_DIR / "generators" / "mime"
VERSION = "mime-v1"
#: the emotion ids of each group, in :data:`EMOTIONS` order (``all``: the ungrouped ablation)
GROUP_IDS: Dict[str, List[int]] = {
    "positive": [EMOTIONS.index(e) for e in POSITIVE_EMOTIONS],
    "negative": [EMOTIONS.index(e) for e in NEGATIVE_EMOTIONS],
    "all": list(range(len(EMOTIONS))),
}


@dataclass
class MimeSettings(C.TrainedSettings):
    """Architecture and ablation switches (saved with the trained model)."""

    NAME: ClassVar[str] = "mime"
    SWITCHES: ClassVar[Tuple[str, ...]] = ("mimicry", "stochastic", "grouping")

    context_turns: int = 2
    max_prompt_tokens: int = 128
    mimicry: bool = True
    stochastic: bool = True
    grouping: bool = True
    #: MiniLM tokens of the encoder's context (newest turn first, so the oldest words are cut)
    max_context_tokens: int = 48
    #: the turns the encoder reads (the paper: the whole context)
    encoder_turns: int = 4
    #: the width of MIME's own layers (the paper's D_h = 300)
    heads_dim: int = 256
    latent_dim: int = 64
    encoder_heads: int = 4
    encoder_ff: int = 512
    #: the KL weight rises linearly from 0 to 1 over this many steps (0: weight 1 from the start)
    kl_warmup_steps: int = 0
    #: the prefix joins the residual stream at the input of the top N decoder layers (see NEC)
    prefix_top_layers: Optional[int] = None
    num_beams: int = 4
    loss_weights: Dict[str, float] = field(default_factory=lambda: {"gen": 1.0, "emotion": 1.0, "elbo": 1.0})

    @property
    def groups(self) -> Tuple[str, ...]:
        return ("positive", "negative") if self.grouping else ("all",)


# ----------------------------------------------------------------------------------- the module
class _Gaussian(nn.Module):
    """``c' = ReLU(FC_sample(x))``, ``μ = FC_μ(c')``, ``log σ² = FC_σ(c')`` (eq. 11–13)."""

    def __init__(self, inp: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.sample = nn.Linear(inp, hidden)
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def forward(self, x):
        h = torch.relu(self.sample(x))
        return self.mu(h), self.logvar(h).clamp(-8.0, 8.0)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    """KL[N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)] per row (diagonal Gaussians, summed over dimensions)."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0).sum(-1)


@dataclass
class MimeOutput:
    """What :meth:`MimeHeads.forward` computes for a batch."""

    prefixes: List[Any]                    # [P_i, d] per row
    emotion_logits: Any                    # [B, 32] (eq. 4)
    distributions: Dict[str, Any]          # group → d_g [B, n_g] (eq. 9)
    mixture: Any                           # [B]: the mimicry mixture weight (see the module docstring)
    mixed_emotion: Any                     # [B, D_h]: w·m + (1−w)·m̃
    kl: Dict[str, Any] = field(default_factory=dict)  # group → [B] (training with the posterior)
    mimic_positive: Any = None             # [B] bool: the user's group (what m is taken from)


class MimeHeads(nn.Module):
    """MIME's layers around the backbone (see the module docstring). ``settings`` is read at every
    forward, never captured (an ablation switched on a branched run reaches the heads)."""

    def __init__(self, settings: MimeSettings, encoder_dim: int, hidden: int, prefix_rms: float) -> None:
        super().__init__()
        self.settings = settings
        D = settings.heads_dim
        heads_n = next(h for h in (settings.encoder_heads, 4, 2, 1) if D % h == 0)
        self.inp = nn.Linear(encoder_dim, D)
        self.ctx_token = nn.Parameter(torch.randn(D) * 0.02)  # [CTX] (eq. 2)
        self.pos = nn.Embedding(settings.max_context_tokens + 1, D)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.encoder = nn.TransformerEncoderLayer(D, heads_n, settings.encoder_ff, dropout=0.1, batch_first=True,
                                                  norm_first=True)
        self.emotion_emb = nn.Embedding(len(EMOTIONS), D)  # E_ε, shared by eq. 4 and eq. 10
        nn.init.normal_(self.emotion_emb.weight, std=0.1)
        self.W_emotion = nn.Linear(D, D, bias=False)  # W_ε (eq. 4)
        self.reply_proj = nn.Linear(encoder_dim, D)  # y: the gold reply for the posterior
        # one prior/posterior pair and one FC_dg per group; "all" serves the ungrouped ablation
        self.prior = nn.ModuleDict({g: _Gaussian(D, D, settings.latent_dim) for g in GROUP_IDS})
        self.posterior = nn.ModuleDict({g: _Gaussian(2 * D, D, settings.latent_dim) for g in GROUP_IDS})
        self.to_dist = nn.ModuleDict({g: nn.Linear(settings.latent_dim, len(ids)) for g, ids in GROUP_IDS.items()})
        self.resp_in = nn.Linear(2 * D, D)  # [H_i ⊕ m] → D_h, then TR_Enc^resp
        self.resp_encoder = nn.TransformerEncoderLayer(D, heads_n, settings.encoder_ff, dropout=0.1, batch_first=True,
                                                       norm_first=True)
        self.contrib = nn.Linear(2 * D, 2 * D)  # FC_contrib (eq. 25)
        self.fused = nn.Linear(2 * D, D)  # FC_fused (eq. 27)
        self.prefix_proj = nn.Linear(D, hidden)  # W_p: MIME's width → the backbone's
        self.prefix_norm = nn.LayerNorm(hidden)
        with torch.no_grad():  # the scale of where the prefix enters (input embeddings or a layer's stream)
            self.prefix_norm.weight.fill_(prefix_rms)

    # -- parts -------------------------------------------------------------------------------------
    def encode(self, tokens, mask):
        """MiniLM token vectors [B, L, e] + mask → H [B, L+1, D_h] with [CTX] first, and its mask."""
        B, L, _ = tokens.shape
        x = torch.cat([self.ctx_token.expand(B, 1, -1), self.inp(tokens)], dim=1)
        x = x + self.pos(torch.arange(L + 1, device=tokens.device)).unsqueeze(0)
        full = torch.cat([mask.new_ones(B, 1), mask], dim=1)
        return self.encoder(x, src_key_padding_mask=full == 0), full

    def emotion_logits(self, c):
        """``s = E_ε W_ε c`` (eq. 4) → [B, 32]."""
        return self.W_emotion(c) @ self.emotion_emb.weight.T

    def context_emotion(self, ctx_tok, ctx_mask):
        """MIME's own context-emotion logits (eq. 2–4) → [B, 32]."""
        H, _ = self.encode(ctx_tok, ctx_mask)
        return self.emotion_logits(H[:, 0])

    def group_embeddings(self, group: str):
        return self.emotion_emb.weight[GROUP_IDS[group]]

    def forward(self, ctx_tok, ctx_mask, positive, reply_vec=None, temperature: float = 1.0,
                generator: Optional[torch.Generator] = None, noise: Optional[Mapping[str, Any]] = None) -> MimeOutput:
        """The prefixes and what they came from.

        ``positive`` ([B] bool): the user's group (gold in training, perceived at serving).
        ``reply_vec`` ([B, e] or None): the gold reply's MiniLM vector; given (training, stochastic)
        the latent is drawn from the posterior and the KL is returned, else from the prior, with
        ``noise[g]`` ([B, latent_dim]) as ``r`` when given, else drawn from ``generator``.
        """
        s = self.settings
        H, mask = self.encode(ctx_tok, ctx_mask)
        c = H[:, 0]  # eq. 3
        emo_logits = self.emotion_logits(c)
        y = self.reply_proj(reply_vec) if reply_vec is not None else None
        e_g, dists, kls = {}, {}, {}
        for g in s.groups:
            mu_p, logvar_p = self.prior[g](c)
            if not s.stochastic:
                z = mu_p
            elif y is not None:
                mu_q, logvar_q = self.posterior[g](torch.cat([c, y], dim=-1))
                z = mu_q + torch.randn_like(mu_q) * (0.5 * logvar_q).exp()
                kls[g] = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)
            else:
                r = (noise[g].to(mu_p) if noise is not None and g in noise
                     else torch.randn(mu_p.shape, generator=generator, dtype=mu_p.dtype).to(mu_p.device))
                z = mu_p + float(temperature) * r * (0.5 * logvar_p).exp()
            dists[g] = torch.softmax(self.to_dist[g](z), dim=-1)  # eq. 9
            e_g[g] = dists[g] @ self.group_embeddings(g)  # eq. 10
        if not s.grouping:
            m = m_tilde = e_g["all"]
        elif s.mimicry:
            pos = positive.view(-1, 1)
            m = torch.where(pos, e_g["positive"], e_g["negative"])  # eq. 18
            m_tilde = torch.where(pos, e_g["negative"], e_g["positive"])  # eq. 19
        else:
            m, m_tilde = e_g["positive"], e_g["negative"]
        words = H[:, 1:]
        word_mask = mask[:, 1:]
        pad = word_mask == 0

        def refine(emotion):  # eq. 20–23 (one TR_Enc^resp for both)
            x = self.resp_in(torch.cat([words, emotion.unsqueeze(1).expand_as(words)], dim=-1))
            return self.resp_encoder(x, src_key_padding_mask=pad)

        M, M_tilde = refine(m), refine(m_tilde)
        M_prime = torch.cat([M, M_tilde], dim=-1)  # eq. 24
        gate = torch.sigmoid(self.contrib(M_prime))  # eq. 25
        M_fused = self.fused(gate * M_prime)  # eq. 26–27
        D = s.heads_dim
        wm = word_mask.unsqueeze(-1).to(gate.dtype)
        g_m = (gate[..., :D] * wm).sum((1, 2)) / (wm.sum((1, 2)) * D).clamp(min=1)
        g_t = (gate[..., D:] * wm).sum((1, 2)) / (wm.sum((1, 2)) * D).clamp(min=1)
        mixture = g_m / (g_m + g_t).clamp(min=1e-6)
        mixed = mixture.unsqueeze(-1) * m + (1 - mixture.unsqueeze(-1)) * m_tilde
        body = self.prefix_norm(self.prefix_proj(torch.cat([m.unsqueeze(1), m_tilde.unsqueeze(1), M_fused], dim=1)))
        prefixes = [body[i, : 2 + int(word_mask[i].sum())] for i in range(body.shape[0])]
        return MimeOutput(prefixes=prefixes, emotion_logits=emo_logits, distributions=dists, mixture=mixture,
                          mixed_emotion=mixed, kl=kls, mimic_positive=positive)


# ----------------------------------------------------------------------------------- inputs
def silver_group_target(reply_emotion: Optional[Sequence[float]], group: str):
    """The reconstruction target of ``d_g``: the reply's emotion distribution within ``group``,
    renormalised (``None`` without one)."""
    if not reply_emotion:
        return None
    p = torch.tensor([float(reply_emotion[i]) for i in GROUP_IDS[group]])
    total = float(p.sum())
    return p / total if total > 0 else torch.full_like(p, 1.0 / len(p))


class MimeModel(C.TrainedModel):
    """Backbone + adapters + MIME heads + the frozen MiniLM encoder."""

    name = "mime"
    version = VERSION
    settings_type = MimeSettings

    def build_heads(self) -> MimeHeads:
        return MimeHeads(self.settings, self.encoder.dim, self.lm.hidden_size, self.lm.stream_rms(self.lm.prefix_layer))

    def context_tensors(self, contexts: Sequence[Sequence[Utterance]]):
        s = self.settings
        return C.context_token_tensors(self.encoder, contexts, s.encoder_turns, s.max_context_tokens, self.device)

    def reply_vectors(self, replies: Sequence[str]):
        hidden, mask, _ = self.encoder.token_embeddings([r if r.strip() else "." for r in replies])
        return C.masked_mean(hidden.clone().to(self.device), mask.clone().to(self.device))

    def conditioning(self, contexts: Sequence[Sequence[Utterance]], positive, replies: Optional[Sequence[str]] = None,
                     temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> MimeOutput:
        tok, mask = self.context_tensors(contexts)
        reply_vec = self.reply_vectors(replies) if (replies is not None and self.settings.stochastic) else None
        return self.heads(tok, mask, positive, reply_vec, temperature=temperature, generator=generator)

    def prompts(self, contexts: Sequence[Sequence[Utterance]]) -> List[List[int]]:
        s = self.settings
        return [C.encode_prompt(self.lm.tokenizer, C.prompt_messages(c, s.context_turns), s.max_prompt_tokens) for c in contexts]

    # -- training ------------------------------------------------------------------------------
    def _batch(self, batch: Sequence[Mapping[str, Any]]):
        contexts = [[Utterance(r, t) for r, t in f["context"]] for f in batch]
        positive = torch.tensor([polarity_of(f["emotion"]) == "positive" for f in batch], device=self.device)
        return contexts, positive

    def reply_nll(self, batch: Sequence[Mapping[str, Any]]):
        """Summed NLL and token count of the gold replies (validation perplexity), the response
        emotion drawn from the prior at temperature 0 (its mean) — what serving without noise sees."""
        contexts, positive = self._batch(batch)
        out = self.conditioning(contexts, positive, temperature=0.0)
        replies = [C.encode_reply(self.lm.tokenizer, f["reference"], self.settings.max_reply_tokens, self.lm.is_seq2seq)
                   for f in batch]
        return self.lm.reply_nll(out.prefixes, self.prompts(contexts), replies)

    def loss(self, batch: Sequence[Mapping[str, Any]], step: int = 0):
        """``γ·NLL + α·CE_emotion + β·Σ_g (KL_g + CE_g)`` (eq. 32); returns (loss, parts)."""
        import torch.nn.functional as F

        s = self.settings
        w = s.loss_weights
        contexts, positive = self._batch(batch)
        out = self.conditioning(contexts, positive, replies=[f["reference"] for f in batch])
        replies = [C.encode_reply(self.lm.tokenizer, f["reference"], s.max_reply_tokens, self.lm.is_seq2seq) for f in batch]
        logits, targets, _ = self.lm.forward(out.prefixes, self.prompts(contexts), replies)
        emo_idx = torch.tensor([EMOTIONS.index(f["emotion"]) for f in batch], device=self.device)
        parts = {"gen": C.token_nll(logits, targets), "emotion": F.cross_entropy(out.emotion_logits, emo_idx)}
        total = w.get("gen", 1.0) * parts["gen"] + w.get("emotion", 1.0) * parts["emotion"]
        recon, kl = [], []
        for g, d in out.distributions.items():
            rows = [(i, silver_group_target(f.get("reply_emotion"), g)) for i, f in enumerate(batch)]
            rows = [(i, t) for i, t in rows if t is not None]
            if rows:
                target = torch.stack([t for _, t in rows]).to(self.device)
                pred = d[[i for i, _ in rows]]
                recon.append(-(target * pred.clamp(min=1e-8).log()).sum(-1).mean())
            if g in out.kl:
                kl.append(out.kl[g].mean())
        if recon:
            parts["recon"] = sum(recon)
        if kl:
            parts["kl"] = sum(kl)
        if recon or kl:
            warm = 1.0 if not s.kl_warmup_steps else min(1.0, (step + 1) / s.kl_warmup_steps)
            elbo = parts.get("recon", 0.0) + warm * parts.get("kl", 0.0)
            total = total + w.get("elbo", 1.0) * elbo
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def emotion_accuracy(self, feats: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1, 2, 5),
                         batch_size: int = 32) -> Dict[str, float]:
        """Top-k accuracy of MIME's own context-emotion classifier (eq. 5) against the ED labels
        (the paper's section 5 reports top-1/2/5)."""
        def logits_and_gold(part):
            tok, mask = self.context_tensors(self._batch(part)[0])
            gold = torch.tensor([EMOTIONS.index(f["emotion"]) for f in part], device=self.device)
            return self.heads.context_emotion(tok, mask), gold

        return C.topk_accuracy(self.heads, feats, logits_and_gold, ks, batch_size)


# ----------------------------------------------------------------------------------- serving
class MimeGenerator(TrainedGenerator):
    """Serves a trained MIME model (``model_dir``; default: the committed one).

    Options (its config section): ``samples`` response-emotion draws per request (each decoded
    with ``num_beams // samples`` beams, all of them candidates for the engine's reranker),
    ``temperature`` of the draw (0: the prior's mean, no noise) and ``seed`` of its random stream
    (a fresh generator replays the same draws in the same order)."""

    name = "mime"
    needs_perception = True
    model_class = MimeModel
    default_model_dir = DEFAULT_MODEL_DIR

    def configure(self, samples: int = 2, temperature: float = 1.0, seed: int = 13) -> None:
        self.samples = int(samples)
        if self.samples < 1:
            raise ValueError(f"mime: samples must be ≥ 1, got {samples}")
        self.temperature = float(temperature)
        if self.temperature < 0:
            raise ValueError(f"mime: temperature must be ≥ 0, got {temperature}")
        if not self.settings.stochastic:
            self.samples = 1  # nothing to sample: one deterministic response emotion
        self.rng = torch.Generator(device="cpu")
        self.rng.manual_seed(int(seed))
        self.beams_per_sample = max(1, self.num_beams // self.samples)

    def version_suffix(self) -> str:
        return f"+s{self.samples}t{self.temperature:g}" if self.samples > 1 or self.temperature != 1.0 else ""

    def rows_per_request(self) -> int:
        return self.samples

    def candidates_per_request(self) -> int:
        return self.samples * self.beams_per_sample

    def _positive(self, requests: Sequence[GenerationRequest], tok, mask):
        """The user's group: perception's (summed group probability), else MIME's own classifier
        (run only when a request comes without perception)."""
        if all(r.perception is not None for r in requests):
            own = [None] * len(requests)
        else:
            own = self.model.heads.context_emotion(tok, mask).argmax(-1).tolist()
        out, source = [], []
        for r, e in zip(requests, own):
            if r.perception is not None:
                out.append(r.perception.polarity == "positive")
                source.append("perception")
            else:
                out.append(polarity_of(EMOTIONS[e]) == "positive")
                source.append("mime")
        return out, source

    def inputs(self, requests: Sequence[GenerationRequest]) -> Inputs:
        """``samples`` rows per request (request-major), each with its own response-emotion draw."""
        model = self.model
        contexts = [r.context for r in requests]
        tok, mask = model.context_tensors(contexts)
        positive, source = self._positive(requests, tok, mask)
        S = self.samples
        rep_tok, rep_mask = tok.repeat_interleave(S, 0), mask.repeat_interleave(S, 0)
        pos = torch.tensor(positive, device=tok.device).repeat_interleave(S)
        # each request draws its own noise in turn, so its draws depend on the stream's position,
        # not on which other requests share its batch
        noise = {g: [] for g in self.settings.groups}
        for _ in requests:
            for g in self.settings.groups:
                noise[g].append(torch.randn(S, self.settings.latent_dim, generator=self.rng))
        noise = {g: torch.cat(rows) for g, rows in noise.items()}
        out = model.heads(rep_tok, rep_mask, pos, None, temperature=self.temperature, noise=noise)
        prompts = [p for p in model.prompts(contexts) for _ in range(S)]
        names = model.heads.emotion_emb.weight
        details = []
        for i, r in enumerate(requests):
            draws = []
            for j in range(i * S, (i + 1) * S):
                top = {}
                for g, d in out.distributions.items():
                    ids = GROUP_IDS[g]
                    best = d[j].argsort(descending=True)[:3].tolist()
                    top[g] = [{"emotion": EMOTIONS[ids[b]], "p": round(float(d[j, b]), 3)} for b in best]
                sims = torch.nn.functional.cosine_similarity(out.mixed_emotion[j].unsqueeze(0), names, dim=-1)
                draws.append({"sampled": top, "nearest": [EMOTIONS[k] for k in sims.argsort(descending=True)[:3].tolist()],
                              "mixture": round(float(out.mixture[j]), 4)})
            details.append({
                "polarity_group": "positive" if positive[i] else "negative",
                "polarity_source": source[i],
                "mimicry_mixture": round(sum(d["mixture"] for d in draws) / len(draws), 4),
                "samples": draws,
                "temperature": self.temperature,
                "variant": self.settings.variant,
            })
        return Inputs(prefixes=out.prefixes, prompts=prompts, details=details)

    def score(self, requests: Sequence[GenerationRequest], references: Sequence[str]) -> Optional[Dict[str, float]]:
        """Perplexity with the prior's mean (temperature 0), one row per request."""
        with torch.inference_mode():
            model = self.model
            contexts = [r.context for r in requests]
            tok, mask = model.context_tensors(contexts)
            positive, _ = self._positive(requests, tok, mask)
            out = model.heads(tok, mask, torch.tensor(positive, device=tok.device), None, temperature=0.0)
            replies = [C.encode_reply(model.lm.tokenizer, ref, 10_000, model.lm.is_seq2seq) for ref in references]
            nll, tokens = model.lm.reply_nll(out.prefixes, model.prompts(contexts), replies)
        return {"nll": nll, "tokens": tokens, "tokenizer": f"{model.backbone_name} (BPE)"}


# ----------------------------------------------------------------------------------- training
def silver_reply_emotions(replies: Sequence[str], progress: bool) -> List[List[float]]:
    """Perception's emotion head on each reply alone (a one-turn dialogue): the silver response
    emotion the ELBO's reconstruction term is trained against."""
    from empathy_nlg.perception.common import EmbeddingCache
    from empathy_nlg.perception.emotion import EmotionClassifier, features_for_dialogues
    from empathy_nlg.perception.encoder import SentenceEncoder
    from empathy_nlg.perception.perceiver import DEFAULT_ARTIFACTS_DIR

    classifier = EmotionClassifier.load(DEFAULT_ARTIFACTS_DIR)
    cache = EmbeddingCache(SentenceEncoder())
    out: List[List[float]] = []
    chunks = range(0, len(replies), 512)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="silver reply emotions", unit="batch")
    for start in chunks:
        part = [[Utterance("speaker", r if r.strip() else ".")] for r in replies[start : start + 512]]
        probs = classifier.predict_proba(features_for_dialogues(part, cache))
        out.extend([[round(float(v), 4) for v in row] for row in probs])
    return out


class MimeRecipe(C.TrainingRecipe):
    """What ``empathy-nlg train --generator mime`` needs from this module."""

    model_class = MimeModel
    NEEDS_CM = False  # MIME has no communication-mechanism signal

    def feature_extra(self, settings: MimeSettings, config: TrainSettings, encoder, out_dir: Path):
        """Adds ``reply_emotion`` (the silver response-emotion distribution) to every feature."""

        def add(feats: List[Dict[str, Any]], progress: bool) -> None:
            for f, p in zip(feats, silver_reply_emotions([f["reference"] for f in feats], progress)):
                f["reply_emotion"] = p

        from empathy_nlg.perception.emotion import VERSION as EMOTION_VERSION

        return add, {"reply_emotion": EMOTION_VERSION}

    def validation_extra(self, model: MimeModel, valid_feats: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """Logged beside the validation perplexity: the emotion classifier's top-1/2/5 accuracy."""
        return {"emotion_acc": model.emotion_accuracy(valid_feats)}


RECIPE = MimeRecipe()

