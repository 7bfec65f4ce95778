"""NEC ("Non-Emotion-Centric Empathetic Dialogue Generation") on a pretrained backbone.

NEC does not hinge the reply on a 32-way emotion label. It injects commonsense about the
*entities* and the *social situation* of the dialogue and uses contrastive learning to push away
generic and wrong-emotion replies. Here is each part, with the adaptation made:

1. **Entity commonsense** — spaCy noun entities of the dialogue, queried for ObjectUse,
   AtLocation, MadeUpOf, HasProperty (:func:`empathy_nlg.knowledge.seeds.nec_entity_knowledge`;
   default source: retrieval over the ATOMIC-2020 sample, or a local COMET-BART with NEC's
   "<dialogue> In this case, <entity>" head). NEC ranks candidates with a BERT relevance scorer
   trained on positive/negative pairs; here :class:`FactScorer` is a logistic bi-encoder on MiniLM
   vectors ``[c ⊙ f, |c − f|]`` (c = dialogue, f = linearised fact) trained at feature-building
   time on silver pairs: a fact is positive when a content word of it occurs in the gold reply
   (NEC's positives are the facts the gold reply uses). The top 3 facts are linearised as
   "entity, relation, tail" under NEC's prompt and put in the system message of the prompt (the
   separator between query and knowledge is the chat template's message boundary).
2. **Social commonsense** — xEffect, xReact, xIntent, xNeed, xWant for the last utterance; per
   relation the candidate most similar to the context (MiniLM cosine — NEC uses MPNet)
   (:func:`~empathy_nlg.knowledge.seeds.nec_social_knowledge`). NEC adds an attention path in the
   decoder; here each chosen inference becomes one *prefix vector* (MiniLM mean-pooled tokens →
   linear → + relation embedding), which every backbone layer attends to — the equivalent
   conditioning of a decoder-only backbone. With ``prefix_top_layers: N`` the vectors join the
   residual stream at the input of the top N layers instead of entering as input embeddings
   (NEC's extra attention path sits in the decoder's upper part as well); that is what lets NEC
   train on the CPU fast path of the ``finetuned`` adapter (LoRA on the top 8 layers only).
3. **Contrastive training** after the NLL stage (``nll_steps``): for each example the gold reply
   is the positive; negatives of the four kinds — D (a reply of a training conversation with a
   different emotion), y′ (the model's own greedy output, generated online), B (another gold reply
   of the batch), H (one of the most frequent replies of ED train). ``z_x`` = projected mean last
   hidden state of ``[prefix ; prompt]``, ``z_y`` = the same for a reply on its own. Candidates
   are ranked gold first, then negatives by unigram F1 with the gold reply; the loss is
   ``L_NLL + w · mean_{i<j} max(0, cos(z_x, z_j) − cos(z_x, z_i) + γ·(j − i))``, γ = 0.01.
4. **Contrastive reranking** — beam search (``num_beams`` returns, ≤ 30 new tokens), then
   ``argmax α·S_sim + (1−α)·S_lm`` with α = 0.7, ``S_sim = cos(z_x, z_y)`` and ``S_lm`` the
   beam's length-normalised log-probability.

Ablations (the paper's Table 4): ``entity``, ``social``, ``neg_d``, ``neg_y``, ``neg_b``,
``neg_h`` set to false.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from empathy_nlg.datasets import Utterance
from empathy_nlg.generators import conditioned as C
from empathy_nlg.generators.base import GenerationRequest
from empathy_nlg.generators.trained import Choice, Inputs, TrainedGenerator
from empathy_nlg.paths import ARTIFACTS_DIR
from empathy_nlg.settings import TrainSettings
from empathy_nlg.taxonomy import NEC_ENTITY_RELATIONS, NEC_SOCIAL_RELATIONS

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = ARTIFACTS_DIR / "generators" / "nec"
VERSION = "nec-v1"
NEGATIVE_KINDS = ("neg_d", "neg_y", "neg_b", "neg_h")
FACT_SCORER_FILE = "fact_scorer.json"
#: dialogues whose knowledge is fetched together when features are built (see NecKnowledge.prefetch)
PREFETCH_BLOCK = 128
_STOP = set("""a an the and or but if so to of in on at for with from by is are was were be been am i you he she
it we they me him her them my your our their this that these those have has had do does did not no yes
just very really too can could would should will get got go went make made thing things some any person
personx persony other others one about into out up down over there here what when how why who""".split())


@dataclass
class NecSettings(C.TrainedSettings):
    NAME: ClassVar[str] = "nec"
    SWITCHES: ClassVar[Tuple[str, ...]] = ("entity", "social", *NEGATIVE_KINDS)

    entity: bool = True
    social: bool = True
    neg_d: bool = True
    neg_y: bool = True
    neg_b: bool = True
    neg_h: bool = True
    max_knowledge_tokens: int = 24
    n_facts: int = 3
    max_entities: int = 3
    knowledge_per_relation: int = 5
    nll_steps: int = 100
    contrastive_weight: float = 1.0
    gamma: float = 0.01
    alpha: float = 0.7
    num_beams: int = 4
    frequent_pool: int = 20
    y_prime_tokens: int = 20
    #: the social prefix joins the residual stream at the input of the top N decoder layers
    #: (``None``: as input embeddings, at the bottom). Set it to ``lora.top_layers`` (or the
    #: ``init_adapter``'s) so a training step runs the lower layers forward only.
    prefix_top_layers: Optional[int] = None

    @classmethod
    def from_mapping(cls, values: Optional[Mapping[str, Any]]) -> "NecSettings":
        s = super().from_mapping(values)
        if not 0.0 <= s.alpha <= 1.0:
            raise ValueError(f"nec alpha must be in [0, 1], got {s.alpha}")
        return s

    @staticmethod
    def switch_label(switch: str) -> str:
        return switch.replace("neg_", "")  # nec-no-b, not nec-no-neg_b

    @property
    def negatives(self) -> List[str]:
        return [k for k in NEGATIVE_KINDS if getattr(self, k)]


# ----------------------------------------------------------------------------------- fact scorer
def content_words(text: str) -> set:
    from empathy_nlg.text import words

    return {t for t in words(text) if len(t) > 2 and t not in _STOP}


class FactScorer:
    """Logistic relevance scorer on MiniLM vectors of (dialogue, linearised fact)."""

    def __init__(self, encoder, weights: Optional[Sequence[float]] = None, bias: float = 0.0) -> None:
        import numpy as np

        self.encoder = encoder
        self.w = np.asarray(weights, dtype=np.float32) if weights is not None else None
        self.b = float(bias)

    @staticmethod
    def features(c, f):
        import numpy as np

        return np.concatenate([c * f, np.abs(c - f)], axis=-1)

    def __call__(self, dialogue: str, facts) -> List[float]:
        import numpy as np

        from empathy_nlg.knowledge.seeds import linearise_fact

        if not facts:
            return []
        vecs = np.asarray(self.encoder.encode([dialogue] + [linearise_fact(f) for f in facts]), dtype=np.float32)
        if self.w is None:  # untrained: cosine (the knowledge module's default)
            return [float(s) for s in vecs[1:] @ vecs[0]]
        x = self.features(vecs[0][None, :], vecs[1:])
        return [float(s) for s in x @ self.w + self.b]

    def fit(self, dialogue_vecs, fact_vecs, labels, seed: int = 13) -> Dict[str, float]:
        """Train on silver pairs (80 %), report AUC on the other 20 %; balanced classes."""
        import numpy as np

        x = torch.tensor(self.features(dialogue_vecs, fact_vecs), dtype=torch.float32)
        y = torch.tensor(labels, dtype=torch.float32)
        idx = list(range(len(y)))
        random.Random(seed).shuffle(idx)
        cut = int(0.8 * len(idx))
        tr, te = idx[:cut], idx[cut:]
        pos = float(y[tr].sum())
        if pos == 0 or pos == len(tr):
            log.warning("fact scorer: silver labels are all %s; keeping cosine ranking", "positive" if pos else "negative")
            return {"pairs": len(y), "positives": pos, "auc": None}
        torch.manual_seed(seed)
        lin = torch.nn.Linear(x.shape[1], 1)
        weight = torch.tensor((len(tr) - pos) / pos)
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=100)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                lin(x[tr]).squeeze(-1), y[tr], pos_weight=weight) + 1e-3 * lin.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.w = lin.weight.detach().numpy()[0].astype(np.float32)
        self.b = float(lin.bias.detach())
        scores = (x[te] @ torch.tensor(self.w) + self.b).numpy()
        return {"pairs": int(len(y)), "positives": int(y.sum()), "auc": round(_auc(scores, y[te].numpy()), 4)}

    def to_dict(self) -> Dict[str, Any]:
        return {"weights": None if self.w is None else [round(float(v), 6) for v in self.w], "bias": self.b}


def _auc(scores, labels) -> float:
    import numpy as np

    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ----------------------------------------------------------------------------------- the module
class NecHeads(nn.Module):
    """NEC's layers around the backbone: the social-inference prefix projection (+ relation
    embeddings) and the contrastive projection of ``z_x`` / ``z_y``. Their shapes depend only on
    the dimensions; no setting is read inside."""

    def __init__(self, encoder_dim: int, hidden: int, prefix_rms: float) -> None:
        super().__init__()
        self.social_proj = nn.Linear(encoder_dim, hidden)
        self.relation_emb = nn.Embedding(len(NEC_SOCIAL_RELATIONS), hidden)
        nn.init.normal_(self.relation_emb.weight, std=0.02)
        self.prefix_norm = nn.LayerNorm(hidden)
        with torch.no_grad():  # the scale of where the prefix enters (input embeddings or a layer's stream)
            self.prefix_norm.weight.fill_(prefix_rms)
        self.z_proj = nn.Linear(hidden, hidden)  # contrastive projection of z_x and z_y

    def social_prefix(self, vecs, present):
        """[B, R, e] pooled inference vectors + [B, R] presence → list of [P_i, d]."""
        x = self.prefix_norm(self.social_proj(vecs) + self.relation_emb.weight.unsqueeze(0))
        return [x[i][present[i] > 0] for i in range(x.shape[0])]


def entity_system_text(facts: Sequence[Sequence[str]]) -> str:
    from empathy_nlg.knowledge.seeds import nec_knowledge_prompt

    return nec_knowledge_prompt([tuple(f) for f in facts])


class NecModel(C.TrainedModel):
    """Backbone + adapters + NEC heads (+ the frozen MiniLM for social inferences)."""

    name = "nec"
    version = VERSION
    settings_type = NecSettings

    def __init__(self, settings: NecSettings, backbone, encoder, adapter_dir: Optional[Path] = None,
                 lora: Optional[Mapping[str, Any]] = None, trainable: bool = False) -> None:
        super().__init__(settings, backbone, encoder, adapter_dir=adapter_dir, lora=lora, trainable=trainable)
        self.fact_scorer = FactScorer(encoder)
        self.scorer_report: Dict[str, Any] = {}
        # set by the recipe before training
        self.pool_by_emotion: Dict[str, List[str]] = {}
        self.frequent: List[str] = []
        self.rng = random.Random(13)
        #: the contrastive step's fast path: one dropout-free pass over the distinct replies, the y′
        #: negatives decoded under autocast with the frozen weights cast once (False: two passes
        #: with dropout and fp32 decoding, as before; kept as ``bench-train --nec``'s baseline)
        self.fast_contrastive = True

    def build_heads(self) -> NecHeads:
        return NecHeads(self.encoder.dim, self.lm.hidden_size, self.lm.stream_rms(self.lm.prefix_layer))

    # -- conditioning ----------------------------------------------------------------------------
    def prefixes(self, social: Sequence[Mapping[str, str]]):
        B = len(social)
        if not self.settings.social:
            return [torch.zeros(0, self.lm.hidden_size, device=self.device) for _ in range(B)]
        texts, flags = [], []
        for s in social:
            for rel in NEC_SOCIAL_RELATIONS:
                t = (s or {}).get(rel) or ""
                texts.append(t or ".")
                flags.append(1.0 if t else 0.0)
        hidden, mask, _ = self.encoder.token_embeddings(texts)
        hidden = hidden[:, : self.settings.max_knowledge_tokens].clone().to(self.device)
        mask = mask[:, : self.settings.max_knowledge_tokens].clone().to(self.device)
        pooled = C.masked_mean(hidden, mask).reshape(B, len(NEC_SOCIAL_RELATIONS), -1)
        present = torch.tensor(flags, device=self.device).reshape(B, len(NEC_SOCIAL_RELATIONS))
        return self.heads.social_prefix(pooled, present)

    def prompts(self, contexts: Sequence[Sequence[Utterance]], facts: Sequence[Sequence[Sequence[str]]]) -> List[List[int]]:
        s = self.settings
        out = []
        for ctx, fs in zip(contexts, facts):
            extra = entity_system_text(fs) if (s.entity and fs) else ""
            out.append(C.encode_prompt(self.lm.tokenizer, C.prompt_messages(ctx, s.context_turns, extra), s.max_prompt_tokens))
        return out

    def z(self, vectors):
        return self.heads.z_proj(vectors)

    # -- training ------------------------------------------------------------------------------
    def _inputs(self, batch: Sequence[Mapping[str, Any]]):
        contexts = [[Utterance(r, t) for r, t in f["context"]] for f in batch]
        prefixes = self.prefixes([f.get("social") or {} for f in batch])
        prompts = self.prompts(contexts, [f.get("facts") or [] for f in batch])
        return prefixes, prompts

    def reply_nll(self, batch: Sequence[Mapping[str, Any]]):
        prefixes, prompts = self._inputs(batch)
        replies = [C.encode_reply(self.lm.tokenizer, f["reference"], self.settings.max_reply_tokens, self.lm.is_seq2seq) for f in batch]
        return self.lm.reply_nll(prefixes, prompts, replies)

    def negatives(self, batch: Sequence[Mapping[str, Any]], prefixes, prompts) -> List[List[str]]:
        """One negative reply of each enabled kind per example (see the module docstring)."""
        s = self.settings
        golds = [f["reference"] for f in batch]
        out: List[List[str]] = [[] for _ in batch]
        own: List[str] = []
        if s.neg_y:
            was_training = self.peft.training
            self.peft.train(False)
            # the trainer's bf16 autocast, with the frozen weights cast once rather than at each step
            fast = self.fast_contrastive
            with (self.lm._autocast() if fast else contextlib.nullcontext()), \
                    (self.lm.frozen_weights_cast() if fast else contextlib.nullcontext()):
                ids, _ = self.lm.generate([p.detach() for p in prefixes], prompts,
                                          {"max_new_tokens": s.y_prime_tokens, "num_beams": 1})
            self.peft.train(was_training)
            own = [self.lm.decode(i).strip() or "." for i in ids]
        for i, f in enumerate(batch):
            if s.neg_d:
                others = [e for e in self.pool_by_emotion if e != f["emotion"] and self.pool_by_emotion[e]]
                if others:
                    out[i].append(self.rng.choice(self.pool_by_emotion[self.rng.choice(others)]))
            if s.neg_y:
                out[i].append(own[i])
            if s.neg_b and len(batch) > 1:
                out[i].append(golds[(i + 1) % len(batch)])
            if s.neg_h and self.frequent:
                out[i].append(self.rng.choice(self.frequent))
        return out

    def loss(self, batch: Sequence[Mapping[str, Any]], step: int = 0):
        from empathy_nlg.text import token_f1

        s = self.settings
        prefixes, prompts = self._inputs(batch)
        replies = [C.encode_reply(self.lm.tokenizer, f["reference"], s.max_reply_tokens, self.lm.is_seq2seq) for f in batch]
        contrastive = step >= s.nll_steps and bool(s.negatives)
        logits, targets, info = self.lm.forward(prefixes, prompts, replies, hidden=contrastive)
        nll = C.token_nll(logits, targets)
        parts = {"gen": nll}
        total = nll
        if contrastive:
            negs = self.negatives(batch, prefixes, prompts)
            n = min(len(x) for x in negs)
            if n:
                # rank negatives by closeness to the gold reply (closest = best-ranked)
                ranked = [sorted(x[:n], key=lambda t, g=f["reference"]: -token_f1(t, [g])) for x, f in zip(negs, batch)]
                z_x = self.z(C.masked_mean(info["context_hidden"], info["context_mask"]))
                golds = [f["reference"] for f in batch]
                flat = [t for row in ranked for t in row]
                # every distinct reply encoded once, without dropout: a B negative is another
                # example's gold, H negatives come from a pool of 20 frequent replies
                if self.fast_contrastive:
                    uniq = list(dict.fromkeys(golds + flat))
                    where = {t: i for i, t in enumerate(uniq)}
                    with self.lm.without_dropout():
                        z_all = self.z(self.lm.text_vectors(uniq, s.max_reply_tokens))
                    z_pos = z_all[[where[t] for t in golds]]
                    z_neg = z_all[[where[t] for t in flat]].reshape(len(batch), n, -1)
                else:
                    z_pos = self.z(self.lm.text_vectors(golds, s.max_reply_tokens))
                    z_neg = self.z(self.lm.text_vectors(flat, s.max_reply_tokens)).reshape(len(batch), n, -1)
                cl, _ = C.rank_margin_loss(z_x, z_pos, z_neg, s.gamma)
                parts["contrastive"] = cl
                total = total + s.contrastive_weight * cl
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "fact_scorer_report": self.scorer_report}

    def save_extra(self, folder: Path) -> None:
        import json

        (Path(folder) / FACT_SCORER_FILE).write_text(json.dumps(self.fact_scorer.to_dict()))

    def load_extra(self, folder: Path, config: Mapping[str, Any]) -> None:
        import json

        path = Path(folder) / FACT_SCORER_FILE
        if path.is_file():
            d = json.loads(path.read_text())
            self.fact_scorer = FactScorer(self.encoder, d.get("weights"), d.get("bias", 0.0))
        self.scorer_report = dict(config.get("fact_scorer_report") or {})


# ----------------------------------------------------------------------------------- knowledge
class CachedEncoder:
    """``encode()`` with a per-text memory: commonsense tails repeat across dialogues, so each is
    embedded once (bounded LRU)."""

    def __init__(self, encoder, size: int = 50_000) -> None:
        from collections import OrderedDict

        self.encoder = encoder
        self.size = size
        self._memory: "OrderedDict[str, Any]" = OrderedDict()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def encode(self, texts: Sequence[str], **kwargs: Any):
        import numpy as np

        missing = list(dict.fromkeys(t for t in texts if t not in self._memory))
        if missing:
            for t, v in zip(missing, self.encoder.encode(missing, **kwargs)):
                self._memory[t] = v
            while len(self._memory) > self.size:
                self._memory.popitem(last=False)
        return np.stack([self._memory[t] for t in texts]) if texts else np.zeros((0, self.encoder.dim), dtype=np.float32)


class NecKnowledge:
    """Entity facts (ranked by the fact scorer) and social inferences for a dialogue."""

    def __init__(self, source, encoder, settings: NecSettings, scorer: FactScorer, cache_size: int = 50_000) -> None:
        self.source = source
        self.encoder = CachedEncoder(encoder, size=cache_size)
        self.settings = settings
        self.scorer = scorer
        self.use_scorer(scorer)
        #: entities of dialogues warmed by :meth:`prefetch`, consumed by :meth:`candidates`
        self._entities: Dict[str, List[str]] = {}

    def prefetch(self, contexts: Sequence[Sequence[Utterance]]) -> None:
        """Warm the caches for a block of dialogues, so that :meth:`social` and :meth:`candidates`
        then answer from memory: one batched knowledge query per relation family and one batched
        encoding for the block, instead of several small ones per dialogue (how the features of
        all of ED train are built in minutes rather than hours). The block's queries must fit the
        knowledge source's cache (``cache_size``, 4,096 by default: blocks of ≤ 128 dialogues)."""
        from empathy_nlg.knowledge.seeds import entity_heads, extract_entities, social_texts

        s = self.settings
        if s.social:
            lasts = [self.last_said(ctx) for ctx in contexts]
            answers = self.source.infer(lasts, list(NEC_SOCIAL_RELATIONS), k=s.knowledge_per_relation)
            texts: List[str] = []
            for ctx, last, answer in zip(contexts, lasts, answers):
                texts.extend(social_texts(answer, [u.text for u in ctx], last))
            self.encoder.encode(texts)
        if s.entity:
            heads: List[str] = []
            for ctx in contexts:
                text = self.dialogue_text(ctx, s.context_turns)
                if text not in self._entities:  # a dialogue repeated in the block is parsed once
                    self._entities[text] = extract_entities(text, max_entities=s.max_entities)
                heads.extend(entity_heads(self.source, text, self._entities[text]))
            self.source.infer(heads, list(NEC_ENTITY_RELATIONS), k=s.knowledge_per_relation)

    def use_scorer(self, scorer: FactScorer) -> None:
        """Rank facts with ``scorer``'s weights, embedding through this object's cache."""
        self.scorer = FactScorer(self.encoder, scorer.w, scorer.b)

    @staticmethod
    def dialogue_text(context: Sequence[Utterance], turns: int) -> str:
        return " ".join(u.text for u in list(context)[-max(1, turns):])

    def candidates(self, context: Sequence[Utterance]):
        from empathy_nlg.knowledge.seeds import nec_entity_knowledge

        text = self.dialogue_text(context, self.settings.context_turns)
        return nec_entity_knowledge(self.source, text, k=self.settings.knowledge_per_relation,
                                    max_entities=self.settings.max_entities, entities=self._entities.pop(text, None))

    def entity_facts(self, context: Sequence[Utterance]) -> List[List[str]]:
        from empathy_nlg.knowledge.seeds import rank_entity_facts

        if not self.settings.entity:
            return []
        facts = self.candidates(context)
        ranked = rank_entity_facts(self.dialogue_text(context, self.settings.context_turns), facts, self.scorer,
                                   top_n=self.settings.n_facts)
        return [[f.entity, f.relation, f.tail] for f in ranked]

    def social(self, context: Sequence[Utterance]) -> Dict[str, str]:
        from empathy_nlg.knowledge.seeds import nec_social_knowledge

        if not self.settings.social:
            return {}
        return nec_social_knowledge(self.source, self.last_said(context), [u.text for u in context], self.encoder,
                                    k=self.settings.knowledge_per_relation)

    @staticmethod
    def last_said(context: Sequence[Utterance]) -> str:
        """The user's (speaker's) last message, the head of the social inferences."""
        speakers = [u.text for u in context if u.role == "speaker"]
        return speakers[-1] if speakers else context[-1].text


# ----------------------------------------------------------------------------------- serving
class NecGenerator(TrainedGenerator):
    """Serves a trained NEC model (``model_dir``; default: the committed one) with contrastive reranking.

    NEC's own parts on the shared loop (:class:`~empathy_nlg.generators.trained.TrainedGenerator`):
    the knowledge (entity facts into the prompt, social commonsense into the prefix) and the choice
    among the beams, ``argmax α·S_sim + (1−α)·S_lm``."""

    name = "nec"
    needs_perception = False  # NEC is non-emotion-centric: it does not condition on the label
    model_class = NecModel
    default_model_dir = DEFAULT_MODEL_DIR
    needs_context_vectors = True  # z_x of the reranking, from the decoding pass

    def configure(self, knowledge: Optional[Mapping[str, Any]] = None, rerank: bool = True,
                  alpha: Optional[float] = None) -> None:
        from empathy_nlg.knowledge.base import load_knowledge_source_or_none

        self.rerank = bool(rerank)
        self.alpha = float(self.settings.alpha if alpha is None else alpha)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"nec alpha must be in [0, 1], got {self.alpha}")
        self.knowledge = None
        if self.settings.entity or self.settings.social:
            source = load_knowledge_source_or_none(dict(knowledge or {"type": "retrieval"}), "nec", encoder=self.model.encoder)
            self.knowledge = NecKnowledge(source, self.model.encoder, self.settings, self.model.fact_scorer)
            if self.settings.entity:
                from empathy_nlg.knowledge.seeds import load_spacy

                load_spacy()  # at load, not on the first user's turn (several seconds on this CPU)

    def version_suffix(self) -> str:
        return "" if self.rerank else "/no-rerank"

    def candidates_per_request(self) -> int:
        return max(1, self.num_beams) if self.rerank else 1

    def inputs(self, requests: Sequence[GenerationRequest]) -> Inputs:
        facts = [self.knowledge.entity_facts(r.context) if self.knowledge else [] for r in requests]
        social = [self.knowledge.social(r.context) if self.knowledge else {} for r in requests]
        knowledge = [{"entity": [", ".join(f) for f in fa], "social": [f"{rel}: {t}" for rel, t in so.items() if t]}
                     for fa, so in zip(facts, social)]
        details = [{"variant": self.settings.variant, "facts": fa, "social": so} for fa, so in zip(facts, social)]
        return Inputs(prefixes=self.model.prefixes(social), prompts=self.model.prompts([r.context for r in requests], facts),
                      knowledge=knowledge, details=details)

    def choose(self, inputs: Inputs, texts: Sequence[str], beam_scores, k: int) -> Choice:
        """Contrastive reranking (eq. 8): the beam whose representation is closest to the context's."""
        if k == 1:
            return Choice(chosen=list(range(len(texts))), candidates=[[{"text": t, "score": 0.0}] if t else [] for t in texts],
                          details=[{"nec_rerank": None} for _ in texts])
        n = len(texts) // k
        ctx = inputs.context_vectors
        if ctx is None:  # not taken while decoding (a seq2seq backbone): one more pass over the prompt
            ctx = self.model.lm.context_vectors(inputs.prefixes, inputs.prompts)
        z_x = self.model.z(ctx)
        z_y = self.model.z(self.model.lm.text_vectors([t or "." for t in texts]))
        sim = C.cosine(z_x.repeat_interleave(k, dim=0), z_y)
        lm = beam_scores if beam_scores is not None else torch.zeros_like(sim)
        total = self.alpha * sim + (1 - self.alpha) * lm.to(sim.dtype)
        chosen, candidates, details = [], [], []
        for i in range(n):
            block = total[i * k : (i + 1) * k]
            chosen.append(i * k + int(block.argmax()))
            scored = [{"text": texts[i * k + j], "sim": round(float(sim[i * k + j]), 4),
                       "lm": round(float(lm[i * k + j]), 4), "score": round(float(block[j]), 4)} for j in range(k)]
            details.append({"nec_rerank": {"alpha": self.alpha, "candidates": scored}})
            candidates.append([{"text": c["text"], "score": c["score"]} for c in scored if c["text"]])
        return Choice(chosen=chosen, candidates=candidates, details=details)


# ----------------------------------------------------------------------------------- training
def frequent_replies(path: Path, n: int) -> List[str]:
    """The ``n`` most frequent replies of an ED file (case/space-normalised; original text kept)."""
    from empathy_nlg.datasets import generation_examples, read_ed_jsonl

    counts: Counter = Counter()
    first: Dict[str, str] = {}
    for ex in generation_examples(read_ed_jsonl(path)):
        key = " ".join(ex.reference.lower().split())
        counts[key] += 1
        first.setdefault(key, ex.reference)
    return [first[k] for k, _ in counts.most_common(n)]


class NecRecipe(C.TrainingRecipe):
    model_class = NecModel
    NEEDS_CM = False  # NEC has no communication-mechanism loss

    def feature_extra(self, settings: NecSettings, config: TrainSettings, encoder, out_dir: Path):
        """Adds ``fact_candidates`` / ``facts`` (entity) and ``social`` to every feature, and trains the
        fact scorer on the training split (saved to ``out_dir/fact_scorer.json``)."""
        if not (settings.entity or settings.social):
            return None, None
        source_cfg = dict(config.knowledge or {"type": "retrieval"})
        scorer_path = Path(out_dir) / FACT_SCORER_FILE
        if settings.entity and not scorer_path.is_file():
            # a run that continues a model ranks facts with that model's scorer (not one refitted on
            # the examples this run still trains, which may be a part of the split)
            run_dir = Path(config.out_dir) if config.out_dir else None
            for folder in (run_dir / "checkpoint" if run_dir else None, config.init_from, config.init_model):
                if folder and (Path(folder) / FACT_SCORER_FILE).is_file():
                    Path(out_dir).mkdir(parents=True, exist_ok=True)
                    scorer_path.write_text((Path(folder) / FACT_SCORER_FILE).read_text())
                    log.info("fact scorer: %s (the continued model's)", Path(folder) / FACT_SCORER_FILE)
                    break

        def add(feats: List[Dict[str, Any]], progress: bool) -> None:
            import json

            import numpy as np

            from empathy_nlg.knowledge.base import load_knowledge_source
            from empathy_nlg.knowledge.seeds import join_dialogue, linearise_fact

            source = load_knowledge_source(dict(source_cfg), encoder=encoder)
            scorer = FactScorer(encoder)
            # a memory large enough for the commonsense tails and facts of all of ED train
            nk = NecKnowledge(source, encoder, settings, scorer, cache_size=400_000)
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(feats), desc="knowledge (entity + social)", unit="ex")
            for start in range(0, len(feats), PREFETCH_BLOCK):
                block = feats[start : start + PREFETCH_BLOCK]
                contexts = [[Utterance(r, t) for r, t in f["context"]] for f in block]
                nk.prefetch(contexts)
                for f, ctx in zip(block, contexts):
                    f["social"] = nk.social(ctx)
                    f["fact_candidates"] = [[x.entity, x.relation, x.tail] for x in nk.candidates(ctx)] if settings.entity else []
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
            if not settings.entity:
                return
            dlg_texts = [join_dialogue(nk.dialogue_text([Utterance(r, t) for r, t in f["context"]], settings.context_turns))
                         for f in feats]
            training_split = not scorer_path.is_file()
            if training_split:  # the first split built is the training split: fit the scorer on it
                pairs = [(i, tuple(c)) for i, f in enumerate(feats) for c in f["fact_candidates"]]
                if pairs:
                    uniq_facts = sorted({linearise_fact(c) for _, c in pairs})
                    # through the knowledge object's memory: the ranking below reuses these vectors
                    fvec = dict(zip(uniq_facts, np.asarray(nk.encoder.encode(uniq_facts, progress=progress))))
                    dvec = np.asarray(nk.encoder.encode(dlg_texts, progress=progress))
                    labels = [1.0 if content_words(c[0] + " " + c[2]) & content_words(feats[i]["reference"]) else 0.0
                              for i, c in pairs]
                    report = scorer.fit(np.stack([dvec[i] for i, _ in pairs]), np.stack([fvec[linearise_fact(c)] for _, c in pairs]), labels)
                else:
                    report = {"pairs": 0, "auc": None}
                scorer_path.write_text(json.dumps({**scorer.to_dict(), "report": report}))
                log.info("fact scorer: %s", report)
            d = json.loads(scorer_path.read_text())
            nk.use_scorer(FactScorer(encoder, d.get("weights"), d.get("bias", 0.0)))
            scorer = nk.scorer
            from empathy_nlg.knowledge.seeds import EntityFact, rank_entity_facts

            # one batched encoding of what the ranking needs (a no-op where the fit above cached it)
            nk.encoder.encode(dlg_texts + sorted({linearise_fact(c) for f in feats for c in f["fact_candidates"]}),
                              progress=progress)
            for f, ctx_text in zip(feats, dlg_texts):
                cands = [EntityFact(*c) for c in f["fact_candidates"]]
                f["facts"] = [[x.entity, x.relation, x.tail] for x in rank_entity_facts(ctx_text, cands, scorer, top_n=settings.n_facts)]

        key = {"knowledge": source_cfg, "entity": settings.entity, "social": settings.social, "n_facts": settings.n_facts,
               "max_entities": settings.max_entities, "k": settings.knowledge_per_relation, "turns": settings.context_turns}
        return add, key

    def prepare(self, model: NecModel, train_feats: Sequence[Mapping[str, Any]], config: TrainSettings,
                out_dir: Optional[Path] = None, train_path: Optional[Path] = None) -> None:
        """Negative pools (by emotion; the most frequent ED replies) and the trained fact scorer."""
        import json


        pools: Dict[str, List[str]] = {}
        for f in train_feats:
            pools.setdefault(f["emotion"], []).append(f["reference"])
        model.pool_by_emotion = pools
        if train_path is not None and model.settings.neg_h:
            model.frequent = frequent_replies(train_path, model.settings.frequent_pool)
        model.rng = random.Random(config.seed)
        torch.manual_seed(config.seed)
        if out_dir is not None and (Path(out_dir) / FACT_SCORER_FILE).is_file():
            d = json.loads((Path(out_dir) / FACT_SCORER_FILE).read_text())
            model.fact_scorer = FactScorer(model.encoder, d.get("weights"), d.get("bias", 0.0))
            model.scorer_report = d.get("report") or {}


RECIPE = NecRecipe()
