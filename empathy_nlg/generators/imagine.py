"""IMAGINE ("Wish I Can Feel What You Feel", Wang et al.) on a pretrained backbone.

IMAGINE chains five modules. Here is each, with the adaptation made and the paper's equation it
stands for:

1. **Emotion perception** — the perception models (:mod:`empathy_nlg.perception`) give the
   emotion; the module also keeps the paper's emotion classifier on the refined cause
   representation (``emotion_head``, cross-entropy on the gold ED label, weight 1). The emotion
   signal ``e = Σ_i p_i E_i`` over 32 learned emotion embeddings is the *first decoder input*
   (prefix position 0). Training feeds the gold label (one-hot), serving the perceived emotion
   (one-hot of the top label); without perception the module's own head decides.
2. **Cause extraction** — the cause utterances come from the perception cause model (training:
   ED train annotated by that model, ``causes: model`` in the training config; a heuristic —
   every speaker turn — is available as ``causes: speaker``). Input text keeps the role:
   ``"speaker: …"`` / ``"listener: …"``. Encoder: the paper embeds GloVe vectors and runs a
   one-layer Transformer; here the frozen MiniLM of perception gives contextual token vectors
   (GloVe's role: pretrained, not trained here), projected to the backbone width ``d`` and passed
   through one trainable Transformer layer with learned positions → ``H_c ∈ R^{L_c×d}``.
3. **Experience projection** — COMET-style inferences for the cause utterances over IMAGINE's 11
   ATOMIC relations, five per relation, grouped Affect / Behaviour / Physical / Events
   (:func:`empathy_nlg.knowledge.seeds.imagine_knowledge`; default source: retrieval over the
   ATOMIC-2020 sample, or a local COMET-BART). Each group's inferences form one sequence, encoded
   by the same encoder; Affect is mean-pooled, the other groups are read at their first position
   → ``k_g ∈ R^d``. Fusion, token-wise with the cause representation (eq. 13–16):

   * ``F_g = ReLU(W_f [H_c ; k_g + g_emb] + b_f)``         (eq. 13, fusion; shared ``W_f``)
   * ``R_g = LN(F_g + MLP(F_g))``                          (eq. 14, refinement)
   * ``γ_g = σ(w_γ [H_c ; R_g] + b_γ) ∈ R^{L_c×1}``         (eq. 15, importance gate)
   * ``H = LN(H_c + Σ_g γ_g ⊙ R_g)``                        (eq. 16, gated knowledge-refined causes)

   (groups that found nothing are masked out of the sum).
4. **Dialogue reaction** — CM probabilities ``p_m`` for ER/IP/EX; the CM signal is
   ``c = Σ_m p_m C_m`` over three learned mechanism embeddings (eq. 9). Training uses the EPITOME
   response classifiers' probabilities on the *gold* reply (silver labels — ED has no CM labels)
   and trains the module's ``cm_head`` on ``H`` against them (BCE, weight 1); serving uses the
   perceived CM probabilities (predicted from the context), falling back to ``cm_head``.
5. **Verbal expression** — the paper's decoder attends to ``H`` with the emotion signal first and
   the CM signal fused in. Here the decoder is the pretrained backbone with LoRA adapters, and
   attention to ``H`` is realised as *prefix vectors*: ``[e ; c ; W_p H]`` (normalised to the
   scale of the backbone's token embeddings) in front of the dialogue prompt (the last turns as
   chat messages — the paper's decoder sees only the cause; the backbone also reads what the user
   just said, so the reply answers it).

Loss: ``1·NLL + 1·CE_emotion + 1·BCE_CM + 1.5·FACE`` where FACE is the frequency-weighted NLL with
weights computed on the training replies (:func:`~.conditioned.face_weights`).

Ablations (the paper's Table 2), as training-config switches that also hold at serving time:
``cause: false`` (the encoder reads the last context turns instead of the cause utterances, and
knowledge is queried from the last user turn), ``cm: false`` (no CM signal, no CM loss),
``knowledge: false`` (``H = H_c``), ``face: false`` (no diversity loss).
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
from empathy_nlg.taxonomy import CM_CODES, EMOTIONS, IMAGINE_KNOWLEDGE_GROUPS

log = logging.getLogger(__name__)

GROUPS = tuple(IMAGINE_KNOWLEDGE_GROUPS)  # affect, behaviour, physical, events
DEFAULT_MODEL_DIR = ARTIFACTS_DIR / "generators" / "imagine"
VERSION = "imagine-v1"


@dataclass
class ImagineSettings(C.TrainedSettings):
    """Architecture and ablation switches (saved with the trained model)."""

    NAME: ClassVar[str] = "imagine"
    SWITCHES: ClassVar[Tuple[str, ...]] = ("cause", "cm", "knowledge", "face")

    context_turns: int = 3
    max_prompt_tokens: int = 96
    cause: bool = True
    cm: bool = True
    knowledge: bool = True
    face: bool = True
    max_cause_tokens: int = 48
    max_knowledge_tokens: int = 32
    knowledge_per_relation: int = 5
    encoder_heads: int = 8
    encoder_ff: int = 1024
    loss_weights: Dict[str, float] = field(default_factory=lambda: {"gen": 1.0, "emotion": 1.0, "cm": 1.0, "face": 1.5})


# ----------------------------------------------------------------------------------- the module
class ImagineHeads(nn.Module):
    """The IMAGINE layers around the backbone (see the module docstring).

    ``settings`` is an attribute read at every forward (``knowledge``, ``cm``), never captured:
    when a run branches off another (``--init-from``) with an ablation switched, the model hands its
    new settings to the heads (:attr:`ImagineModel.settings`)."""

    def __init__(self, settings: ImagineSettings, encoder_dim: int, hidden: int, embedding_rms: float) -> None:
        super().__init__()
        self.settings = settings
        heads_n = next(h for h in (settings.encoder_heads, 8, 4, 2, 1) if hidden % h == 0)
        self.inp = nn.Linear(encoder_dim, hidden)
        max_len = max(settings.max_cause_tokens, settings.max_knowledge_tokens) + 2
        self.pos = nn.Embedding(max_len, hidden)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.encoder = nn.TransformerEncoderLayer(
            hidden, heads_n, settings.encoder_ff, dropout=0.1, batch_first=True, norm_first=True
        )
        self.group_emb = nn.Embedding(len(GROUPS), hidden)
        self.fuse = nn.Linear(2 * hidden, hidden)
        self.refine = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.refine_norm = nn.LayerNorm(hidden)
        self.gate = nn.Linear(2 * hidden, 1)
        self.out_norm = nn.LayerNorm(hidden)
        self.emotion_head = nn.Linear(hidden, len(EMOTIONS))
        self.cm_head = nn.Linear(hidden, len(CM_CODES))
        self.emotion_emb = nn.Embedding(len(EMOTIONS), hidden)
        self.cm_emb = nn.Embedding(len(CM_CODES), hidden)
        self.prefix_proj = nn.Linear(hidden, hidden)
        self.prefix_norm = nn.LayerNorm(hidden)
        with torch.no_grad():
            self.prefix_norm.weight.fill_(embedding_rms)

    def encode(self, tokens, mask):
        """MiniLM token vectors [B, L, e] → H [B, L, d] (one Transformer layer)."""
        L = tokens.shape[1]
        x = self.inp(tokens) + self.pos(torch.arange(L, device=tokens.device)).unsqueeze(0)
        return self.encoder(x, src_key_padding_mask=mask == 0)

    def forward(self, cause_tok, cause_mask, know, emotion_probs, cm_probs, own=None):
        """Returns prefixes (list of [P_i, d]), emotion logits, CM logits and the mean gate per group.

        ``know``: (token vectors [B, G, Lk, e], mask [B, G, Lk], present [B, G]) or None; an
        empty group holds a placeholder token (so attention is defined) and ``present`` 0.
        ``own`` ([B] bool, optional): rows without perceived signals — their ``emotion_probs``
        (one-hot of the emotion head) and ``cm_probs`` (CM head) are filled in place from this
        module's own predictions before the prefix is built.
        """
        Hc = self.encode(cause_tok, cause_mask)  # [B, Lc, d]
        gates = torch.zeros(Hc.shape[0], len(GROUPS), device=Hc.device)
        H = Hc
        if self.settings.knowledge and know is not None:
            know_tok, know_mask, present = know
            B, G, Lk, _ = know_tok.shape
            K = self.encode(know_tok.reshape(B * G, Lk, -1), know_mask.reshape(B * G, Lk)).reshape(B, G, Lk, -1)
            km = know_mask.to(K.dtype)
            affect = (K[:, 0] * km[:, 0].unsqueeze(-1)).sum(1) / km[:, 0].sum(1, keepdim=True).clamp(min=1)
            k = torch.cat([affect.unsqueeze(1), K[:, 1:, 0]], dim=1)  # [B, G, d]
            k = k + self.group_emb.weight.unsqueeze(0)
            total = torch.zeros_like(Hc)
            for g in range(G):
                kg = k[:, g].unsqueeze(1).expand_as(Hc)
                F_g = torch.relu(self.fuse(torch.cat([Hc, kg], dim=-1)))
                R_g = self.refine_norm(F_g + self.refine(F_g))
                gamma = torch.sigmoid(self.gate(torch.cat([Hc, R_g], dim=-1)))  # [B, Lc, 1]
                gamma = gamma * present[:, g].view(-1, 1, 1)
                total = total + gamma * R_g
                gates[:, g] = C.masked_mean(gamma, cause_mask).squeeze(-1)
            H = self.out_norm(Hc + total)
        pooled = C.masked_mean(H, cause_mask)
        emo_logits = self.emotion_head(pooled)
        cm_logits = self.cm_head(pooled)
        if own is not None and bool(own.any()):
            emotion_probs[own] = torch.nn.functional.one_hot(emo_logits[own].argmax(-1), len(EMOTIONS)).to(emotion_probs.dtype)
            cm_probs[own] = torch.sigmoid(cm_logits[own]).to(cm_probs.dtype)
        signals = [emotion_probs @ self.emotion_emb.weight]
        if self.settings.cm:
            signals.append(cm_probs @ self.cm_emb.weight)
        sig = torch.stack(signals, dim=1)  # [B, 1|2, d]
        body = self.prefix_proj(H)
        prefixes = []
        for i in range(H.shape[0]):
            n = int(cause_mask[i].sum())
            prefixes.append(self.prefix_norm(torch.cat([sig[i], body[i, :n]], dim=0)))
        return prefixes, emo_logits, cm_logits, gates



# ----------------------------------------------------------------------------------- inputs
def cause_text(context: Sequence[Utterance], indices: Sequence[int], use_cause: bool, turns: int) -> str:
    """The encoder input: the cause utterances with their roles (or, ablated, the last turns)."""
    if use_cause and indices:
        chosen = [context[i] for i in sorted(set(indices)) if 0 <= i < len(context)]
    else:
        chosen = list(context)[-max(1, turns):]
    if not chosen:
        chosen = list(context)[-1:]
    return " | ".join(f"{u.role}: {u.text}" for u in chosen)


def knowledge_heads(context: Sequence[Utterance], indices: Sequence[int], use_cause: bool) -> List[str]:
    """The utterances commonsense is queried for: the causes, or (ablated) the last user turn."""
    if use_cause and indices:
        return [context[i].text for i in sorted(set(indices)) if 0 <= i < len(context)]
    speakers = [u.text for u in context if u.role == "speaker"]
    return speakers[-1:] or [context[-1].text]


def heuristic_causes(context: Sequence[Utterance]) -> List[int]:
    """Every speaker turn (used when no cause model is available)."""
    return [i for i, u in enumerate(context) if u.role == "speaker"] or [len(context) - 1]


class ImagineModel(C.TrainedModel):
    """Backbone + adapters + IMAGINE heads + the frozen MiniLM encoder: one object for training and
    serving."""

    name = "imagine"
    version = VERSION
    settings_type = ImagineSettings

    def __init__(self, settings: ImagineSettings, backbone, encoder, adapter_dir: Optional[Path] = None,
                 lora: Optional[Mapping[str, Any]] = None, trainable: bool = False) -> None:
        super().__init__(settings, backbone, encoder, adapter_dir=adapter_dir, lora=lora, trainable=trainable)
        self.face = None  # tensor [V] of FACE weights (training only)

    def build_heads(self) -> "ImagineHeads":
        return ImagineHeads(self.settings, self.encoder.dim, self.lm.hidden_size, self.lm.embedding_rms)

    # -- tensors -------------------------------------------------------------------------------
    def _encode_texts(self, texts: Sequence[str], max_tokens: int):
        """Frozen MiniLM token vectors (cloned out of inference mode) and mask, cut to ``max_tokens``."""
        texts = [t if t.strip() else "." for t in texts]
        hidden, mask, _ = self.encoder.token_embeddings(texts)
        hidden, mask = hidden[:, :max_tokens].clone().to(self.device), mask[:, :max_tokens].clone().to(self.device)
        return hidden, mask

    def _knowledge_tensors(self, knowledge: Sequence[Mapping[str, Sequence[str]]]):
        s = self.settings
        texts, flags = [], []
        for kn in knowledge:
            for g in GROUPS:
                items = [t for t in (kn.get(g) or []) if t]
                texts.append("; ".join(items) if items else ".")
                flags.append(bool(items))
        hidden, mask = self._encode_texts(texts, s.max_knowledge_tokens)
        B = len(knowledge)
        present = torch.tensor(flags, dtype=hidden.dtype, device=hidden.device).reshape(B, len(GROUPS))
        return hidden.reshape(B, len(GROUPS), hidden.shape[1], -1), mask.reshape(B, len(GROUPS), -1), present

    def conditioning(self, causes: Sequence[str], knowledge: Sequence[Mapping[str, Sequence[str]]],
                     emotion_probs, cm_probs, own=None):
        cause_tok, cause_mask = self._encode_texts(causes, self.settings.max_cause_tokens)
        know = None
        if self.settings.knowledge:
            know = self._knowledge_tensors(knowledge)
        return self.heads(cause_tok, cause_mask, know, emotion_probs, cm_probs, own)

    def prompts(self, contexts: Sequence[Sequence[Utterance]]) -> List[List[int]]:
        s = self.settings
        return [C.encode_prompt(self.lm.tokenizer, C.prompt_messages(c, s.context_turns), s.max_prompt_tokens) for c in contexts]

    # -- training ------------------------------------------------------------------------------
    def _teacher_forced(self, batch: Sequence[Mapping[str, Any]]):
        import torch.nn.functional as F

        s = self.settings
        emo_idx = torch.tensor([EMOTIONS.index(f["emotion"]) for f in batch], device=self.device)
        emo_onehot = F.one_hot(emo_idx, len(EMOTIONS)).float()
        cm_target = torch.tensor([f["cm"] for f in batch], dtype=torch.float32, device=self.device)
        contexts = [[Utterance(r, t) for r, t in f["context"]] for f in batch]
        causes = [cause_text(c, f["cause_indices"], s.cause, s.context_turns) for c, f in zip(contexts, batch)]
        prefixes, emo_logits, cm_logits, _ = self.conditioning(causes, [f.get("knowledge", {}) for f in batch], emo_onehot, cm_target)
        replies = [C.encode_reply(self.lm.tokenizer, f["reference"], s.max_reply_tokens, self.lm.is_seq2seq) for f in batch]
        logits, targets, _ = self.lm.forward(prefixes, self.prompts(contexts), replies)
        return logits, targets, emo_logits, emo_idx, cm_logits, cm_target

    def reply_nll(self, batch: Sequence[Mapping[str, Any]]):
        """Summed NLL and token count of the gold replies (validation perplexity)."""
        logits, targets, *_ = self._teacher_forced(batch)
        return C.summed_nll(logits, targets)

    def loss(self, batch: Sequence[Mapping[str, Any]], step: int = 0):
        """The weighted IMAGINE loss of a batch of training features; returns (loss, parts)."""
        import torch.nn.functional as F

        s = self.settings
        w = s.loss_weights
        logits, targets, emo_logits, emo_idx, cm_logits, cm_target = self._teacher_forced(batch)
        parts = {"gen": C.token_nll(logits, targets), "emotion": F.cross_entropy(emo_logits, emo_idx)}
        total = w.get("gen", 1.0) * parts["gen"] + w.get("emotion", 1.0) * parts["emotion"]
        if s.cm:
            parts["cm"] = F.binary_cross_entropy_with_logits(cm_logits, cm_target)
            total = total + w.get("cm", 1.0) * parts["cm"]
        if s.face and self.face is not None:
            parts["face"] = C.token_nll(logits, targets, self.face)
            total = total + w.get("face", 1.5) * parts["face"]
        return total, {k: float(v.detach()) for k, v in parts.items()}


# ----------------------------------------------------------------------------------- serving
class ImagineGenerator(TrainedGenerator):
    """Serves a trained IMAGINE model (``model_dir``; default: the committed one).

    IMAGINE's own parts on the shared loop (:class:`~empathy_nlg.generators.trained.TrainedGenerator`):
    the cause utterances, the experience-projection knowledge and the perceived emotion / CM plan
    that become its prefix (:meth:`inputs`)."""

    name = "imagine"
    needs_perception = True
    model_class = ImagineModel
    default_model_dir = DEFAULT_MODEL_DIR

    def configure(self, knowledge: Optional[Mapping[str, Any]] = None) -> None:
        from empathy_nlg.knowledge.base import load_knowledge_source_or_none

        self.knowledge = None
        if self.settings.knowledge:
            self.knowledge = load_knowledge_source_or_none(dict(knowledge or {"type": "retrieval"}), "imagine",
                                                           encoder=self.model.encoder)

    # -- inputs --------------------------------------------------------------------------------
    def _cause_indices(self, request: GenerationRequest) -> List[int]:
        p = request.perception
        if p is not None and p.causes:
            return [c.index for c in p.causes if 0 <= c.index < len(request.context)]
        return heuristic_causes(request.context)

    def _knowledge(self, request: GenerationRequest, indices: Sequence[int]) -> Dict[str, List[str]]:
        from empathy_nlg.knowledge.seeds import imagine_knowledge

        if not self.settings.knowledge:
            return {}
        if request.knowledge and all(g in request.knowledge for g in GROUPS):
            return {g: list(request.knowledge[g]) for g in GROUPS}
        heads = knowledge_heads(request.context, indices, self.settings.cause)
        return imagine_knowledge(self.knowledge, heads, k=self.settings.knowledge_per_relation)

    def _signals(self, requests: Sequence[GenerationRequest]):
        emo = torch.zeros(len(requests), len(EMOTIONS))
        cm = torch.zeros(len(requests), len(CM_CODES))
        known = []
        for i, r in enumerate(requests):
            p = r.perception
            if p is not None:
                emo[i, EMOTIONS.index(p.emotion)] = 1.0
                cm[i] = torch.tensor([float(p.cm.get(c, 0.0)) for c in CM_CODES])
            known.append(p is not None)
        return emo.to(self.model.device), cm.to(self.model.device), known

    def inputs(self, requests: Sequence[GenerationRequest]) -> Inputs:
        """Prefixes plus what goes into each reply's ``details`` (emotion, causes, knowledge, CM plan)."""

        s = self.settings
        indices = [self._cause_indices(r) for r in requests]
        knowledge = [self._knowledge(r, idx) for r, idx in zip(requests, indices)]
        causes = [cause_text(r.context, idx, s.cause, s.context_turns) for r, idx in zip(requests, indices)]
        emo, cm, known = self._signals(requests)
        own = torch.tensor([not k for k in known], device=emo.device)  # no perception: IMAGINE's own heads decide
        prefixes, _, _, gates = self.model.conditioning(causes, knowledge, emo, cm, own)
        details = []
        for i, r in enumerate(requests):
            cm_probs = {c: round(float(cm[i, j]), 4) for j, c in enumerate(CM_CODES)}
            plan = [c for c, v in cm_probs.items() if v >= 0.5] or [max(cm_probs, key=cm_probs.get)]
            details.append({
                "emotion": EMOTIONS[int(emo[i].argmax())],
                "emotion_source": "perception" if known[i] else "imagine",
                "cause_utterances": [r.context[j].text for j in indices[i] if 0 <= j < len(r.context)] if s.cause else [],
                "cm": cm_probs if s.cm else {},
                "cm_plan": plan if s.cm else [],
                "knowledge_gates": {g: round(float(gates[i, j]), 4) for j, g in enumerate(GROUPS)} if s.knowledge else {},
                "variant": s.variant,
            })
        return Inputs(prefixes=prefixes, prompts=self.model.prompts([r.context for r in requests]),
                      knowledge=knowledge, details=details)


# ----------------------------------------------------------------------------------- training
class ImagineRecipe(C.TrainingRecipe):
    """What ``empathy-nlg train --generator imagine`` needs from this module."""

    model_class = ImagineModel

    def feature_extra(self, settings: ImagineSettings, config: TrainSettings, encoder, out_dir: Path):
        """Adds ``knowledge`` (the four groups) to every feature, from the configured source."""
        if not settings.knowledge:
            return None, None
        source_cfg = dict(config.knowledge or {"type": "retrieval"})

        def add_knowledge(feats: List[Dict[str, Any]], progress: bool) -> None:
            from empathy_nlg.knowledge.base import load_knowledge_source
            from empathy_nlg.knowledge.seeds import imagine_knowledge

            # No disk cache here: the features file is the cache (and one JSON file rewritten
            # per query would make this quadratic).
            source = load_knowledge_source(dict(source_cfg), encoder=encoder)
            items = feats
            if progress:
                from tqdm.auto import tqdm

                items = tqdm(feats, desc="knowledge (experience projection)", unit="ex")
            for f in items:
                context = [Utterance(r, t) for r, t in f["context"]]
                heads = knowledge_heads(context, f["cause_indices"], settings.cause)
                f["knowledge"] = imagine_knowledge(source, heads, k=settings.knowledge_per_relation)

        return add_knowledge, {"knowledge": source_cfg, "cause": settings.cause, "k": settings.knowledge_per_relation}

    def prepare(self, model: ImagineModel, train_feats: Sequence[Mapping[str, Any]], config: TrainSettings, **_: Any) -> None:
        """FACE weights from the training replies."""

        if model.settings.face:
            vocab = model.lm.embeddings.weight.shape[0]
            weights = C.face_weights(model.lm.tokenizer, [f["reference"] for f in train_feats], vocab)
            model.face = torch.tensor(weights, dtype=torch.float32, device=model.device)


RECIPE = ImagineRecipe()
