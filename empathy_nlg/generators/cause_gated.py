"""Emotion-cause gated attention ("Improving Empathetic Response Generation by Recognizing Emotion
Cause in Conversations", Gao et al., Findings of EMNLP 2021) on a pretrained backbone.

Gao et al. predict the context emotion and tag the *words* that caused it (the emotion reasoner),
then let the response generator attend to those words through a **gated attention** layer — hard
gates (attend only to cause words) or soft gates (each word weighted by its cause probability).
Here is each part of the paper's section 4, the equation it stands for and the adaptation made:

1. **Emotion cause annotation** (section 4.1). The paper labels ED at utterance level with a
   RECCON-trained detector and gives every word of a cause utterance the label 1. Here perception's
   cause pair head (RECCON-trained, :mod:`empathy_nlg.perception.cause`) annotates ED train
   (``causes: model``), and the *word* labels are perception's cause **span head** — trained on
   RECCON's human cause spans — inside the cause utterances (feature ``cause_words``: per word its
   probability and whether the head keeps it, :func:`annotate_cause_words`): a finer label than
   "every word of the utterance". Words outside the cause utterances get 0. A feature without them
   falls back to the paper's own labels (every word of a cause utterance: 1).
2. **Emotion reasoner** (section 4.2). Context emotion ``P(ε|X) = softmax(W_e v_x0 + b_e)``
   (eq. 1), word-level cause ``P(c_i|v_xi) = softmax(W_c v_xi + b_c)`` (eq. 2, a sigmoid of one
   logit here), jointly ``L_r = −log P(ε|v_x0) − Σ_i log P(c_i|v_xi)`` (eq. 3–4). *At serving
   the reasoner is perception*: its emotion head gives ε (eq. 1) and its pair + span heads the
   cause words (eq. 2) — models trained beforehand, as the paper pre-trains its reasoner. The module
   keeps a reasoner of its own, built as the paper's (appendix A: one Transformer layer, one head,
   no position embedding): the frozen MiniLM token states of the prompt's turns (GloVe's role:
   pretrained, not trained here) projected to ``reasoner_dim`` (300 in the paper) plus a role
   embedding, with a learned ``[CLS]`` in front. It is trained jointly with the generator (eq. 7,
   ``L = L_g + L_r``; eq. 2's labels are the silver word probabilities as soft targets) and serves
   (a) when a request comes without perception — its emotion and its cause words then drive the
   prefix and the gates — and (b) as the paper's *Accuracy* column: its emotion accuracy is logged
   beside every validation perplexity (``emotion_acc``, with ``cause_f1`` of its word tags).
3. **Input representation** (section 4.3): trainable emotion embeddings ``E_ε ∈ R^{32×d}``
   added to every input word of the encoder and decoder. *Adaptation*: ``E_ε[ε]`` is one *prefix
   vector* (layer-normalised to the scale of the residual stream where it enters) in front of the
   dialogue prompt, entering the top ``prefix_top_layers`` layers like the other papers' prefixes.
   Adding it to every token embedding instead would (i) make all 30 layers depend on a trainable
   parameter — a training step could no longer run the lower layers forward only (the CPU fast path
   of the ``finetuned`` adapter, LoRA on the top 8 layers) — and (ii) have to be re-added to each
   generated token's embedding at every decoding step of every beam; a prefix position that every
   query of the upper layers attends to carries the same signal to every position, sits in the
   shared prefill's key/value cache, and is how IMAGINE's emotion signal enters here too. Training
   feeds the gold ED label (as IMAGINE does), serving the perceived one (without perception: the
   module's reasoner).
4. **Gated attention** (eq. 5): ``a_i = g_i·exp(q·h_i) / Σ_j g_j·exp(q·h_j)`` is exactly
   ``softmax_i(q·h_i + log g_i)`` — an additive bias ``log g_i`` on the attention logits over the
   context positions (:meth:`~empathy_nlg.generators.conditioned.ConditionedBackbone.biased`).
   On a decoder-only backbone the paper's *queries* ("from the cross attention layer" of the
   decoder) are the positions that predict reply tokens — the last prompt position (the
   generation prompt, the decoder's start) and every reply position — and its *keys* (the encoder
   output ``H``) are the prompt positions. The prompt's own queries stay ungated: they compute the
   context representation, which the paper's encoder computes without gates. So the prompt's
   key/value cache is the unbiased backbone's (the shared prefill runs once per example as before)
   and every decoding step of every beam adds the bias over the cached prompt keys.

   * **soft**: ``g_i = max(P(c_i = 1), soft_floor)`` (``log 0`` would turn soft gating into hard
     gating at every non-cause word);
   * **hard**: ``g_i = c_i ∈ {0, 1}`` — perception's cause spans (the span head's threshold, at
     least one word per cause utterance) — and every word of the user's **last turn** is always
     kept (the reply must still answer what was just said when the cause lies in an earlier turn
     or the detector missed it). The paper back-propagates into its binary gates with
     Gumbel-softmax; our gates come from a detector trained beforehand, so nothing needs it;
   * **none**: no bias (the ``gate`` ablation, or a gated model served without it).

   Tokens of the prompt template — the system instruction, role and end-of-turn markers, the
   generation prompt — and the emotion prefix get ``g = 1`` (the paper's ``[CLS]``, "always
   labelled 1"; blocking them would also starve the backbone's attention sink, its first token);
   the reply's own positions get no gate (the paper gates the cross attention, not the decoder's
   self attention). Word probabilities reach backbone tokens through character offsets: a prompt
   token inside a turn's text takes the largest probability of the words it overlaps.

   *Layers*: the paper adds the gated attention to every decoder block. Here the bias applies in
   the top ``gate_top_layers`` layers (8 in ``configs/train/cause_gated.yml``: the layers the
   ``finetuned`` adapter's LoRA trains and where the emotion prefix enters). Those are the layers
   that can learn to use the gated context (the lower 22 are frozen); a pretrained LM's lower layers
   build the local and syntactic features its upper layers read — blocking context there (hard
   gating) would hand every layer above representations it never saw, while gating the top layers
   changes only what the reply draws from the context, as the paper's extra attention layer does.
   The lower layers stay forward-only in training, and the prompt's cache is shared by the beams.
5. **Loss** (eq. 6–7): ``γ·L_gen + α·CE_emotion + β·BCE_cause`` with α = β = γ = 1
   (``loss_weights``: ``gen``, ``emotion``, ``cause``).

Ablations (the paper's Table 4; ``--ablate PART``, training-config switches that also hold at
serving time): ``gate: false`` — "w/o ec": no gated attention and no cause task in the reasoner;
``emotion: false`` — "w/o el": no emotion embedding (the reasoner still learns the emotion). The
strategy is the setting ``gating: soft | hard | none`` (variants ``cause_gated``,
``cause_gated-hard``); the generator's ``gating`` option serves a trained model with another one
(``gating: none``: the same weights without the bias).

**Gold cause utterances** (Gao et al.'s published labels, ``ed-cause-jsonl``; their RECCON-trained detector made them, not annotators): the evaluation harness's
``causes: gold`` option (``configs/eval/generators.yml``: ``cause_gated-gold``,
``cause_gated-hard-gold``) puts the example's gold cause utterances in the request's perception in
place of perception's, without word spans. The *utterances* are then gold, the *words* inside them
still perception's span head (:meth:`CauseGatedGenerator.perceived_words`): the gold labels are
utterance-level, the gates of this model were trained on the span head's word probabilities, and
the same words keep both rows comparable — the difference between the two rows is only which
utterances the cause detector chose, which is what "how much the cause detector costs" asks. As
for perceived causes, only cause utterances among the prompt's ``context_turns`` turns have gates.

The paper's Table 2 (ED test, mean of 5 seeds): soft — BLEU 1.774, Dist-1/2 0.017/0.084, emotion
accuracy 42.4 %; hard — BLEU 1.734, Dist-1/2 0.018/0.090, 42.3 %. Soft wins BLEU and BERTScore,
hard the Dist ratios, and soft wins the human ratings.

``custom.generation`` reports the emotion and its source, the gating strategy and layers, the
cause utterances the gates come from (``cause_utterances``) and their source (``cause_source``),
the cause words with their probabilities, and every prompt token inside the dialogue's turns with its
gate (``gated_tokens``: what a UI highlights as what the reply attended to).
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from empathy_nlg.datasets import Utterance
from empathy_nlg.generators import conditioned as C
from empathy_nlg.generators.base import GenerationRequest
from empathy_nlg.generators.trained import Inputs, TrainedGenerator
from empathy_nlg.paths import ARTIFACTS_DIR
from empathy_nlg.settings import TrainSettings
from empathy_nlg.taxonomy import EMOTIONS

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = ARTIFACTS_DIR / "generators" / "cause_gated"
VERSION = "cause_gated-v1"
STRATEGIES = ("soft", "hard", "none")
#: a reasoner's word is a cause word from this probability on (its own tags, without perception)
REASONER_THRESHOLD = 0.5
_WORD = re.compile(r"\w", re.UNICODE)
_WORDS = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass
class CauseGatedSettings(C.TrainedSettings):
    """Architecture, gating and ablation switches (saved with the trained model)."""

    NAME: ClassVar[str] = "cause_gated"
    SWITCHES: ClassVar[Tuple[str, ...]] = ("gate", "emotion")

    context_turns: int = 2
    max_prompt_tokens: int = 128
    gate: bool = True
    emotion: bool = True
    #: the gating strategy: soft (g = the cause probability), hard (g ∈ {0, 1}) or none
    gating: str = "soft"
    #: soft gates are at least this (log 0 would block the word: hard gating)
    soft_floor: float = 0.05
    #: the gated attention acts in the top N decoder layers (None: all of them)
    gate_top_layers: Optional[int] = None
    #: the emotion prefix joins the residual stream at the input of the top N layers (None: as an
    #: input embedding); set both to ``lora.top_layers`` (or the ``init_adapter``'s)
    prefix_top_layers: Optional[int] = None
    #: the reasoner's width (the paper's 300) and how many MiniLM tokens of the turns it reads
    reasoner_dim: int = 256
    max_reasoner_tokens: int = 96
    num_beams: int = 4
    loss_weights: Dict[str, float] = field(default_factory=lambda: {"gen": 1.0, "emotion": 1.0, "cause": 1.0})

    @classmethod
    def from_mapping(cls, values: Optional[Mapping[str, Any]]) -> "CauseGatedSettings":
        s = super().from_mapping(values)
        if s.gating not in STRATEGIES:
            raise ValueError(f"cause_gated gating must be one of {', '.join(STRATEGIES)}, got {s.gating!r}")
        if not 0.0 < s.soft_floor <= 1.0:
            raise ValueError(f"cause_gated soft_floor must be in (0, 1], got {s.soft_floor}")
        for name in ("gate_top_layers", "prefix_top_layers"):
            v = getattr(s, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"cause_gated {name} must be at least 1 (or null), got {v}")
        if s.max_reasoner_tokens < 1 or s.reasoner_dim < 1:
            raise ValueError("cause_gated max_reasoner_tokens and reasoner_dim must be at least 1")
        return s

    @property
    def strategy(self) -> str:
        """The gating in effect: ``gating``, or ``none`` with the gate ablated."""
        return self.gating if self.gate else "none"

    @property
    def variant(self) -> str:
        off = [n for n in self.SWITCHES if not getattr(self, n)]
        if self.strategy == "none" and "gate" not in off:
            off.insert(0, "gate")
        stem = self.NAME + ("-hard" if self.strategy == "hard" else "")
        return stem if not off else f"{stem}-no-" + "-".join(off)


# ----------------------------------------------------------------------------------- words
class CauseWord(NamedTuple):
    """One word of the dialogue with its cause probability: ``turn`` indexes the context,
    ``[start, end)`` are character offsets into that turn's text, ``cause`` the hard label."""

    turn: int
    start: int
    end: int
    p: float
    cause: bool


def utterance_words(text: str) -> List[Tuple[int, int]]:
    """The ``[start, end)`` offsets of the words (letter/digit runs) of ``text``."""
    return [(m.start(), m.end()) for m in _WORDS.finditer(text)]


def words_from_pieces(text: str, spans: Sequence[Tuple[int, int]], probs: Sequence[float]) -> List[Tuple[int, int, float]]:
    """Word pieces (character spans with a probability each) → whole words ``(start, end, p)``,
    widened to letter/digit boundaries as perception's spans are; a word takes its best piece;
    pieces without a word character (punctuation) are left out."""
    best: Dict[Tuple[int, int], float] = {}
    for (s, e), p in zip(spans, probs):
        if e <= s or not _WORD.search(text[s:e]):
            continue
        while s > 0 and text[s - 1].isalnum():
            s -= 1
        while e < len(text) and text[e].isalnum():
            e += 1
        best[(s, e)] = max(best.get((s, e), 0.0), float(p))
    return [(s, e, p) for (s, e), p in sorted(best.items())]


def _offset_map(original: str, shown: str) -> List[int]:
    """For each character position of ``shown`` (the text the encoder saw, emoji glossed), the
    position in ``original`` (identity when they are equal)."""
    if shown == original:
        return list(range(len(original) + 1))
    out = [0] * (len(shown) + 1)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, shown, original, autojunk=False).get_opcodes():
        for i in range(i1, i2):
            out[i] = j1 + (i - i1) if tag == "equal" else j1
    out[len(shown)] = len(original)
    return out


@dataclass
class EncodedUtterance:
    """MiniLM's view of one utterance: the token states of its word pieces (special tokens left
    out), their character spans in the utterance's text, and its sentence vector (the normalised
    mean over all its tokens, as perception computes it)."""

    hidden: Any                      # [n, e] float32, CPU
    spans: List[Tuple[int, int]]     # n spans into the original text
    pooled: Any                      # [e]


def encode_utterances(encoder, texts: Sequence[str], batch_size: int = 64) -> Dict[str, EncodedUtterance]:
    """Each distinct text of ``texts`` through the frozen MiniLM (one pass per ``batch_size``)."""
    from empathy_nlg.text import emoji_gloss

    unique = list(dict.fromkeys(texts))
    out: Dict[str, EncodedUtterance] = {}
    for start in range(0, len(unique), batch_size):
        part = unique[start : start + batch_size]
        hidden, mask, offsets = encoder.token_embeddings([t if t.strip() else "." for t in part])
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)
        for i, text in enumerate(part):
            n = int(mask[i].sum())
            offs = [tuple(map(int, o)) for o in offsets[i, :n].tolist()]
            keep = [j for j, (a, b) in enumerate(offs) if b > a]
            shown = emoji_gloss(text if text.strip() else ".")
            cmap = _offset_map(text, shown)
            spans = []
            for j in keep:
                a, b = offs[j]
                s = min(cmap[min(a, len(shown))], len(text))
                e = min(max(cmap[min(b, len(shown)) - 1] + 1, s), len(text))
                spans.append((s, e))
            out[text] = EncodedUtterance(hidden=hidden[i, keep].float().cpu().clone(), spans=spans,
                                         pooled=pooled[i].float().cpu().clone())
    return out


class SpanScorer:
    """Perception's cause span head (:class:`empathy_nlg.perception.cause.CauseModel`) as word
    probabilities: what perception thresholds into ``CauseUtterance.spans``, before the threshold."""

    def __init__(self, cause_model) -> None:
        self.model = cause_model
        self.threshold = float(cause_model.span_threshold)
        self.version = str(cause_model.span_config.get("version", "span-head"))

    @classmethod
    def load(cls, art_dir: Optional[Path] = None, encoder=None) -> "SpanScorer":
        """The committed span head (a clear error when it is missing or does not fit ``encoder``)."""
        from empathy_nlg.perception.cause import CauseModel
        from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR

        model = CauseModel.load(Path(art_dir) if art_dir else DEFAULT_ARTIFACTS_DIR)
        if model.span_model is None:
            raise FileNotFoundError("perception's cause span head (cause_span_head.*) is missing; "
                                    "train it with `empathy-nlg train-perception --task cause`")
        in_dim = int(model.span_config.get("in_dim", 0))
        if encoder is not None and in_dim and in_dim != 3 * int(encoder.dim):
            raise ValueError(f"perception's cause span head reads {in_dim // 3}-dim token states, the encoder gives {encoder.dim}")
        return cls(model)

    def words(self, enc: EncodedUtterance, text: str, target_vec, emotion: str) -> List[Tuple[int, int, float, bool]]:
        """``(start, end, p, kept)`` per word of one cause utterance; ``kept``: the head's threshold,
        at least the best word (as ``CauseModel.token_spans``)."""
        import numpy as np

        from empathy_nlg.perception.cause import token_features
        from empathy_nlg.perception.common import predict_head

        valid = [j for j, (a, b) in enumerate(enc.spans) if b > a and _WORD.search(text[a:b])]
        if not valid:
            return []
        hidden = enc.hidden[valid].numpy()
        feats = token_features(hidden, np.asarray(target_vec, dtype=np.float32), self.model.emotion_vector(emotion))
        probs = predict_head(self.model.span_model, feats, "bce")[:, 0]
        words = words_from_pieces(text, [enc.spans[j] for j in valid], probs.tolist())
        if not words:
            return []
        kept = [p >= self.threshold for _, _, p in words]
        if not any(kept):
            kept[max(range(len(words)), key=lambda k: words[k][2])] = True
        return [(s, e, p, k) for (s, e, p), k in zip(words, kept)]


def window_start(context: Sequence[Utterance], turns: int) -> int:
    """The context index of the first turn the prompt shows (:func:`~.conditioned.prompt_messages`)."""
    return len(context) - len(list(context)[-max(1, turns):])


def last_speaker(context: Sequence[Utterance]) -> int:
    """The index of the user's last turn (the last turn when no turn is the user's)."""
    return next((i for i in range(len(context) - 1, -1, -1) if context[i].role == "speaker"), len(context) - 1)


def label_words(context: Sequence[Utterance], indices: Sequence[int], start: int) -> List[CauseWord]:
    """Gao et al.'s labels: every word of a cause utterance (in the window from ``start``) is 1."""
    out = []
    for i in sorted(set(indices)):
        if start <= i < len(context):
            out.extend(CauseWord(i, s, e, 1.0, True) for s, e in utterance_words(context[i].text))
    return out


def annotate_cause_words(feats: List[Dict[str, Any]], encoder, scorer: SpanScorer, turns: int,
                         progress: bool = False, block: int = 256) -> None:
    """Adds ``cause_words`` (``[[turn, start, end, p, kept], …]``) to every feature: the span
    head's word probabilities inside its cause utterances (``cause_indices``) among the prompt's
    last ``turns`` turns, conditioned on the gold emotion and the user's last turn (the target)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(feats), desc="cause words (span head)", unit="ex")
    for b in range(0, len(feats), block):
        part = feats[b : b + block]
        contexts = [[Utterance(r, t) for r, t in f["context"]] for f in part]
        texts = []
        for f, ctx in zip(part, contexts):
            start = window_start(ctx, turns)
            texts.extend(ctx[i].text for i in f.get("cause_indices") or [] if start <= i < len(ctx))
            texts.append(ctx[last_speaker(ctx)].text)
        encoded = encode_utterances(encoder, texts)
        for f, ctx in zip(part, contexts):
            start = window_start(ctx, turns)
            target = encoded[ctx[last_speaker(ctx)].text].pooled.numpy()
            words = []
            for i in sorted(set(f.get("cause_indices") or [])):
                if start <= i < len(ctx):
                    text = ctx[i].text
                    words.extend([i, s, e, round(p, 3), int(k)] for s, e, p, k in scorer.words(encoded[text], text, target, f["emotion"]))
            f["cause_words"] = words
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()


# ----------------------------------------------------------------------------------- prompt → gates
@dataclass
class PromptGates:
    """The prompt's token ids and, per token, the context turn it shows (``None``: the template),
    its cause probability and hard label, and its text."""

    ids: List[int]
    turns: List[Optional[int]]
    probs: List[float]
    causes: List[bool]
    texts: List[str]

    def gates(self, strategy: str, floor: float, keep_turn: Optional[int]) -> List[float]:
        """``g`` per token (template tokens 1; see the module docstring)."""
        out = []
        for turn, p, c in zip(self.turns, self.probs, self.causes):
            if turn is None or strategy == "none":
                out.append(1.0)
            elif strategy == "soft":
                out.append(max(float(p), floor))
            else:
                out.append(1.0 if (c or turn == keep_turn) else 0.0)
        return out


def message_ranges(text: str, messages: Sequence[Mapping[str, str]]) -> List[Optional[Tuple[int, int]]]:
    """Where each message's content lies in the prompt text (in order; ``None``: not found)."""
    out: List[Optional[Tuple[int, int]]] = []
    cursor = 0
    for m in messages:
        content = m.get("content") or ""
        k = text.find(content, cursor) if content else -1
        if k < 0 and content.strip():
            content = content.strip()
            k = text.find(content, cursor)
        if k < 0:
            out.append(None)
            continue
        out.append((k, k + len(content)))
        cursor = k + len(content)
    return out


def map_prompt(tokenizer, messages: List[Dict[str, str]], first_turn: int, max_tokens: int,
               words: Sequence[CauseWord]) -> PromptGates:
    """The prompt of :func:`~.conditioned.encode_prompt` (same ids) with each token's turn and
    cause probability: the largest of the words of its turn it overlaps (0 for none)."""
    text = C.prompt_text(tokenizer, messages)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError) as exc:
        raise ValueError(f"cause_gated needs a fast tokenizer (character offsets): {exc}") from None
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    cut = max(0, len(ids) - max_tokens)
    ids, offsets = ids[cut:], offsets[cut:]
    ranges = message_ranges(text, messages)
    by_turn: Dict[int, List[CauseWord]] = {}
    for w in words:
        by_turn.setdefault(int(w.turn), []).append(w)
    turns, probs, causes, texts = [], [], [], []
    for a, b in offsets:
        turn, p, c = None, 0.0, False
        if b > a:
            for k, r in enumerate(ranges[1:]):  # ranges[0]: the system message (template)
                if r is not None and a < r[1] and b > r[0]:
                    turn = first_turn + k
                    la, lb = a - r[0], b - r[0]
                    for w in by_turn.get(turn, ()):
                        if w.start < lb and w.end > la:
                            p, c = max(p, float(w.p)), c or bool(w.cause)
                    break
        turns.append(turn)
        probs.append(p)
        causes.append(c)
        texts.append(text[a:b])
    return PromptGates(ids=ids, turns=turns, probs=probs, causes=causes, texts=texts)


def gate_bias(gates: Sequence[float], n_prefix: int):
    """``log g`` over ``[prefix ; prompt]`` (the prefix ungated): eq. 5 as an additive bias."""
    g = torch.tensor([1.0] * n_prefix + list(gates), dtype=torch.float32)
    return torch.log(g)  # log 0 = -inf: a blocked key


def gate_layers(lm: C.ConditionedBackbone, top_layers: Optional[int]) -> Optional[List[int]]:
    """The decoder layers the gated attention acts in (``None``: all)."""
    if lm.is_seq2seq:
        raise ValueError("cause_gated needs a decoder-only backbone (its gated attention biases the decoder's "
                         "attention over the prompt), not a seq2seq one")
    if not top_layers:
        return None
    n = len(lm.decoder_layers())
    if not 1 <= int(top_layers) <= n:
        raise ValueError(f"gate_top_layers must be between 1 and {n}, got {top_layers}")
    return list(range(n - int(top_layers), n))


# ----------------------------------------------------------------------------------- the module
class CauseGatedHeads(nn.Module):
    """The emotion embeddings ``E_ε`` (as a prefix) and the module's own emotion reasoner (see the
    module docstring). ``settings`` is read at every call, never captured."""

    def __init__(self, settings: CauseGatedSettings, encoder_dim: int, hidden: int, prefix_rms: float) -> None:
        super().__init__()
        self.settings = settings
        D = settings.reasoner_dim
        self.emotion_emb = nn.Embedding(len(EMOTIONS), hidden)  # E_ε (section 4.3)
        nn.init.normal_(self.emotion_emb.weight, std=0.02)
        self.prefix_norm = nn.LayerNorm(hidden)
        with torch.no_grad():  # the scale of where the prefix enters (input embeddings or a layer's stream)
            self.prefix_norm.weight.fill_(prefix_rms)
        # the emotion reasoner (section 4.2, appendix A: one layer, one head, no positions)
        self.inp = nn.Linear(encoder_dim, D)
        self.cls = nn.Parameter(torch.randn(D) * 0.02)
        self.role = nn.Embedding(2, D)  # speaker / listener
        self.encoder = nn.TransformerEncoderLayer(D, 1, 2 * D, dropout=0.1, batch_first=True, norm_first=True)
        self.emotion_out = nn.Linear(D, len(EMOTIONS))  # W_e, b_e (eq. 1)
        self.cause_out = nn.Linear(D, 1)  # W_c, b_c (eq. 2: a sigmoid is the two-way softmax)

    def reason(self, tokens, roles, mask):
        """MiniLM token states [B, L, e], roles [B, L] (1: speaker), mask [B, L] → emotion logits
        [B, 32] (eq. 1, from [CLS]) and cause logits [B, L] (eq. 2)."""
        B = tokens.shape[0]
        x = self.inp(tokens) + self.role(roles)
        x = torch.cat([self.cls.expand(B, 1, -1), x], dim=1)
        full = torch.cat([mask.new_ones(B, 1), mask], dim=1)
        H = self.encoder(x, src_key_padding_mask=full == 0)
        return self.emotion_out(H[:, 0]), self.cause_out(H[:, 1:]).squeeze(-1)

    def emotion_prefix(self, emotion_ids):
        """``LN(E_ε[ε])`` → [B, 1, d]."""
        return self.prefix_norm(self.emotion_emb(emotion_ids)).unsqueeze(1)


@dataclass
class Window:
    """The prompt's turns of one dialogue as the reasoner reads them."""

    start: int                        # context index of the first turn shown
    utterances: List[EncodedUtterance]
    target: Any                       # the user's last turn's sentence vector


@dataclass
class Reasoned:
    """The reasoner's outputs for a batch, and where each of its positions came from."""

    emotion_logits: Any               # [B, 32]
    cause_logits: Any                 # [B, L]
    mask: Any                         # [B, L]
    positions: List[List[Tuple[int, Tuple[int, int]]]]  # per row: (turn, character span) per position


class CauseGatedModel(C.TrainedModel):
    """Backbone + adapters + emotion embeddings + the reasoner + the frozen MiniLM encoder."""

    name = "cause_gated"
    version = VERSION
    settings_type = CauseGatedSettings

    @property
    def settings(self):
        return self._settings

    @settings.setter
    def settings(self, value) -> None:
        C.TrainedModel.settings.fset(self, value)
        self.lm.bias_layers = gate_layers(self.lm, value.gate_top_layers)

    def build_heads(self) -> CauseGatedHeads:
        return CauseGatedHeads(self.settings, self.encoder.dim, self.lm.hidden_size, self.lm.stream_rms(self.lm.prefix_layer))

    # -- inputs ----------------------------------------------------------------------------------
    def windows(self, contexts: Sequence[Sequence[Utterance]]) -> List[Window]:
        """The prompt's turns of each dialogue (and the user's last turn) through MiniLM, one pass."""
        turns = self.settings.context_turns
        texts = []
        for ctx in contexts:
            texts.extend(u.text for u in list(ctx)[window_start(ctx, turns):])
            texts.append(ctx[last_speaker(ctx)].text)
        encoded = encode_utterances(self.encoder, texts)
        out = []
        for ctx in contexts:
            start = window_start(ctx, turns)
            out.append(Window(start=start, utterances=[encoded[u.text] for u in list(ctx)[start:]],
                              target=encoded[ctx[last_speaker(ctx)].text].pooled))
        return out

    def reason(self, contexts: Sequence[Sequence[Utterance]], windows: Sequence[Window]) -> Reasoned:
        """The reasoner over each window's tokens, oldest turn first; the newest
        ``max_reasoner_tokens`` are kept."""
        limit = self.settings.max_reasoner_tokens
        rows, roles, positions = [], [], []
        for ctx, w in zip(contexts, windows):
            vecs, rr, pos = [], [], []
            for k, enc in enumerate(w.utterances):
                turn = w.start + k
                vecs.append(enc.hidden)
                rr.extend([1 if ctx[turn].role == "speaker" else 0] * len(enc.spans))
                pos.extend((turn, span) for span in enc.spans)
            x = torch.cat(vecs, dim=0) if vecs else torch.zeros(0, self.encoder.dim)
            rows.append(x[-limit:])
            roles.append(rr[-limit:])
            positions.append(pos[-limit:])
        L = max(1, max(r.shape[0] for r in rows))
        tokens = torch.zeros(len(rows), L, self.encoder.dim)
        role_t = torch.zeros(len(rows), L, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        for i, (r, rr) in enumerate(zip(rows, roles)):
            tokens[i, : r.shape[0]] = r
            role_t[i, : len(rr)] = torch.tensor(rr, dtype=torch.long)
            mask[i, : r.shape[0]] = 1
        emo, cause = self.heads.reason(tokens.to(self.device), role_t.to(self.device), mask.to(self.device))
        return Reasoned(emotion_logits=emo, cause_logits=cause, mask=mask.to(self.device), positions=positions)

    def reasoner_words(self, contexts: Sequence[Sequence[Utterance]], reasoned: Reasoned, row: int) -> List[CauseWord]:
        """The reasoner's cause words of one dialogue (eq. 2 tags; at least its best word)."""
        probs = torch.sigmoid(reasoned.cause_logits[row].float()).tolist()
        by_turn: Dict[int, Tuple[List[Tuple[int, int]], List[float]]] = {}
        for (turn, span), p in zip(reasoned.positions[row], probs):
            spans, ps = by_turn.setdefault(turn, ([], []))
            spans.append(span)
            ps.append(p)
        words = [CauseWord(turn, s, e, p, p >= REASONER_THRESHOLD)
                 for turn, (spans, ps) in sorted(by_turn.items())
                 for s, e, p in words_from_pieces(contexts[row][turn].text, spans, ps)]
        if words and not any(w.cause for w in words):
            best = max(range(len(words)), key=lambda k: words[k].p)
            words[best] = words[best]._replace(cause=True)
        return words

    def cause_targets(self, reasoned: Reasoned, words: Sequence[Sequence[CauseWord]]):
        """eq. 2's labels per reasoner position: the probability of the word it lies in (0 outside)."""
        target = torch.zeros(reasoned.cause_logits.shape, dtype=torch.float32)
        for i, (pos, ws) in enumerate(zip(reasoned.positions, words)):
            by_turn: Dict[int, List[CauseWord]] = {}
            for w in ws:
                by_turn.setdefault(int(w.turn), []).append(w)
            for j, (turn, (a, b)) in enumerate(pos):
                hits = [w.p for w in by_turn.get(turn, ()) if w.start < b and w.end > a]
                target[i, j] = max(hits) if hits else 0.0
        return target.to(self.device)

    def prefixes(self, emotion_ids: Sequence[int]):
        if not self.settings.emotion:
            return [torch.zeros(0, self.lm.hidden_size, device=self.device) for _ in emotion_ids]
        rows = self.heads.emotion_prefix(torch.tensor(list(emotion_ids), dtype=torch.long, device=self.device))
        return [rows[i] for i in range(rows.shape[0])]

    def gated_prompts(self, contexts: Sequence[Sequence[Utterance]], words: Sequence[Sequence[CauseWord]],
                      strategy: str) -> Tuple[List[List[int]], Optional[List[Any]], List[PromptGates], List[List[float]]]:
        """Prompt ids, the attention bias (``None`` for ``none``), the token map and the gates."""
        s = self.settings
        n_prefix = 1 if s.emotion else 0
        prompts, bias, maps, gates = [], [], [], []
        for ctx, ws in zip(contexts, words):
            m = map_prompt(self.lm.tokenizer, C.prompt_messages(ctx, s.context_turns), window_start(ctx, s.context_turns),
                           s.max_prompt_tokens, ws)
            g = m.gates(strategy, s.soft_floor, last_speaker(ctx))
            prompts.append(m.ids)
            maps.append(m)
            gates.append(g)
            bias.append(gate_bias(g, n_prefix).to(self.device))
        return prompts, (None if strategy == "none" else bias), maps, gates

    # -- training ------------------------------------------------------------------------------
    def feature_words(self, feature: Mapping[str, Any], context: Sequence[Utterance]) -> List[CauseWord]:
        """The silver cause words of a training feature (``cause_words``; without them, every word
        of its cause utterances — Gao et al.'s labels)."""
        if feature.get("cause_words") is not None:
            return [CauseWord(int(t), int(s), int(e), float(p), bool(k)) for t, s, e, p, k in feature["cause_words"]]
        return label_words(context, feature.get("cause_indices") or [], window_start(context, self.settings.context_turns))

    def _teacher_forced(self, batch: Sequence[Mapping[str, Any]]):
        s = self.settings
        contexts = [[Utterance(r, t) for r, t in f["context"]] for f in batch]
        words = [self.feature_words(f, c) for f, c in zip(batch, contexts)]
        emo_idx = [EMOTIONS.index(f["emotion"]) for f in batch]
        reasoned = self.reason(contexts, self.windows(contexts))
        prompts, bias, _, _ = self.gated_prompts(contexts, words, s.strategy)
        replies = [C.encode_reply(self.lm.tokenizer, f["reference"], s.max_reply_tokens, self.lm.is_seq2seq) for f in batch]
        logits, targets, _ = self.lm.forward(self.prefixes(emo_idx), prompts, replies, attention_bias=bias)
        return logits, targets, reasoned, words, torch.tensor(emo_idx, device=self.device)

    def reply_nll(self, batch: Sequence[Mapping[str, Any]]):
        """Summed NLL and token count of the gold replies (validation perplexity)."""
        logits, targets, *_ = self._teacher_forced(batch)
        return C.summed_nll(logits, targets)

    def loss(self, batch: Sequence[Mapping[str, Any]], step: int = 0):
        """``γ·NLL + α·CE_emotion + β·BCE_cause`` (eq. 4, 6, 7); returns (loss, parts)."""
        import torch.nn.functional as F

        s = self.settings
        w = s.loss_weights
        logits, targets, reasoned, words, emo_idx = self._teacher_forced(batch)
        parts = {"gen": C.token_nll(logits, targets), "emotion": F.cross_entropy(reasoned.emotion_logits, emo_idx)}
        total = w.get("gen", 1.0) * parts["gen"] + w.get("emotion", 1.0) * parts["emotion"]
        if s.gate:
            valid = reasoned.mask > 0
            target = self.cause_targets(reasoned, words)
            parts["cause"] = F.binary_cross_entropy_with_logits(reasoned.cause_logits[valid], target[valid])
            total = total + w.get("cause", 1.0) * parts["cause"]
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def reasoner_scores(self, feats: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1, 2, 5),
                        batch_size: int = 32) -> Dict[str, Any]:
        """The reasoner's top-k emotion accuracy against the ED labels (the paper's Accuracy) and,
        with the gate on, the F1 of its word tags against the silver ones (by reasoner position)."""
        hits = {k: 0 for k in ks}
        tp = fp = fn = 0
        was = self.heads.training
        self.heads.train(False)
        with torch.no_grad():
            for start in range(0, len(feats), batch_size):
                part = feats[start : start + batch_size]
                contexts = [[Utterance(r, t) for r, t in f["context"]] for f in part]
                reasoned = self.reason(contexts, self.windows(contexts))
                gold = torch.tensor([EMOTIONS.index(f["emotion"]) for f in part], device=self.device)
                ranked = reasoned.emotion_logits.argsort(-1, descending=True)
                for k in ks:
                    hits[k] += int((ranked[:, :k] == gold.unsqueeze(1)).any(1).sum())
                if self.settings.gate:
                    labels = [[w._replace(p=float(w.cause)) for w in self.feature_words(f, c)] for f, c in zip(part, contexts)]
                    target = self.cause_targets(reasoned, labels) > 0.5
                    pred = torch.sigmoid(reasoned.cause_logits) >= REASONER_THRESHOLD
                    valid = reasoned.mask > 0
                    tp += int((pred & target & valid).sum())
                    fp += int((pred & ~target & valid).sum())
                    fn += int((~pred & target & valid).sum())
        self.heads.train(was)
        out: Dict[str, Any] = {"emotion_acc": {f"top{k}": round(100.0 * hits[k] / max(1, len(feats)), 2) for k in ks}}
        if self.settings.gate:
            out["cause_f1"] = round(100.0 * 2 * tp / max(1, 2 * tp + fp + fn), 2)
        return out


# ----------------------------------------------------------------------------------- serving
class CauseGatedGenerator(TrainedGenerator):
    """Serves a trained cause-gated model (``model_dir``; default: the committed one).

    Options (its config section): ``gating`` — ``soft``, ``hard`` or ``none`` to serve the model
    with another strategy than it was trained with (null: its own); ``perception_dir`` — where
    perception's cause span head is (null: the committed perception artefacts), which turns the
    perceived cause utterances into word probabilities. Without the head, the perceived spans are
    the gates (1 inside, 0 outside: soft gating then differs from hard only by the floor)."""

    name = "cause_gated"
    needs_perception = True
    model_class = CauseGatedModel
    default_model_dir = DEFAULT_MODEL_DIR

    def configure(self, gating: Optional[str] = None, perception_dir: Optional[str] = None) -> None:
        self.gating = str(gating or self.settings.strategy)
        if self.gating not in STRATEGIES:
            raise ValueError(f"cause_gated gating must be one of {', '.join(STRATEGIES)}, got {gating!r}")
        if self.gating != "none" and self.attention not in ("eager", "sdpa", "default"):
            raise ValueError(f"cause_gated: gated attention needs the eager or sdpa attention kernel, not {self.attention!r}")
        self.scorer: Optional[SpanScorer] = None
        try:
            self.scorer = SpanScorer.load(Path(perception_dir) if perception_dir else None, self.model.encoder)
        except (FileNotFoundError, ValueError) as exc:
            if perception_dir:
                raise
            log.warning("cause_gated: %s; the perceived cause spans become the gates", exc)

    def version_suffix(self) -> str:
        return "" if self.gating == self.settings.strategy else f"+{self.gating}"

    def perceived_words(self, request: GenerationRequest, window: Window) -> Tuple[List[CauseWord], str]:
        """The perceived cause utterances in the prompt's turns as words with probabilities: the
        span head's (``perception``), or 1 inside the perceived spans (``perception-spans``).

        A word's hard label (the hard gate) is whether it lies in the cause's ``spans``. A cause
        without spans — the evaluation harness's gold cause utterances (``causes: gold``), which
        name the utterance only — takes the span head's own labels (its threshold, at least its
        best word: what perception would have put in ``spans``); without the span head every word
        of such an utterance is a cause word (Gao et al.'s utterance-level labels). The source is
        ``gold`` (``gold-utterances`` without the span head) when the perception's cause model is
        ``gold`` (``Perception.models["cause"]``, set by the harness)."""
        p = request.perception
        ctx = request.context
        out: List[CauseWord] = []
        gold = (p.models or {}).get("cause") == "gold"
        if self.scorer is not None:
            source = "gold" if gold else "perception"
        else:
            source = "gold-utterances" if gold else "perception-spans"
        for cause in p.causes:
            i = int(cause.index)
            if not window.start <= i < len(ctx):
                continue
            text = ctx[i].text
            spans = [tuple(sp) for sp in (cause.spans or [])] if cause.text == text else []

            def inside(s: int, e: int) -> bool:
                return not spans or any(s < b and e > a for a, b in spans)

            if self.scorer is not None:
                words = self.scorer.words(window.utterances[i - window.start], text, window.target.numpy(), p.emotion)
                out.extend(CauseWord(i, s, e, pw, inside(s, e) if spans else bool(kept)) for s, e, pw, kept in words)
            else:
                out.extend(CauseWord(i, s, e, 1.0 if inside(s, e) else 0.0, inside(s, e)) for s, e in utterance_words(text))
        return out, source

    def inputs(self, requests: Sequence[GenerationRequest]) -> Inputs:
        """The emotion prefix, the prompts and their gated-attention bias, and the details."""
        model, s = self.model, self.settings
        contexts = [list(r.context) for r in requests]
        windows = model.windows(contexts)
        reasoned = None
        if any(r.perception is None for r in requests):
            reasoned = model.reason(contexts, windows)
        emo_ids, sources, words, cause_sources = [], [], [], []
        for i, r in enumerate(requests):
            if r.perception is not None:
                emo_ids.append(EMOTIONS.index(r.perception.emotion))
                sources.append("perception")
                ws, src = self.perceived_words(r, windows[i])
            else:
                emo_ids.append(int(reasoned.emotion_logits[i].argmax()))
                sources.append("reasoner")
                ws, src = model.reasoner_words(contexts, reasoned, i), "reasoner"
            words.append(ws)
            cause_sources.append(src)
        prompts, bias, maps, gates = model.gated_prompts(contexts, words, self.gating)
        layers = model.lm.bias_layers
        details = []
        for i, r in enumerate(requests):
            m, g = maps[i], gates[i]
            gated = [] if self.gating == "none" else [
                {"token": m.texts[j], "turn": m.turns[j], "position": j, "gate": round(g[j], 4)}
                for j in range(len(m.ids)) if m.turns[j] is not None]
            details.append({
                "emotion": EMOTIONS[emo_ids[i]] if s.emotion else None,
                "emotion_source": sources[i] if s.emotion else "ablated",
                "gating": self.gating,
                "gate_layers": "all" if layers is None else list(layers),
                "cause_source": cause_sources[i],
                # the cause utterances the gates come from (context indices; perception's, or the
                # request's gold ones in the harness) — those outside the prompt's turns do nothing
                "cause_utterances": ([int(c.index) for c in r.perception.causes] if r.perception is not None
                                     else sorted({w.turn for w in words[i] if w.cause})),
                "cause_words": [{"turn": w.turn, "word": contexts[i][w.turn].text[w.start:w.end], "start": w.start,
                                 "end": w.end, "p": round(float(w.p), 4), "cause": bool(w.cause)} for w in words[i]],
                "gated_tokens": gated,
                "variant": s.variant,
            })
        return Inputs(prefixes=model.prefixes(emo_ids), prompts=prompts, details=details, attention_bias=bias)


# ----------------------------------------------------------------------------------- training
def span_head_key() -> Dict[str, Any]:
    """What identifies perception's span head (for the features' fingerprint)."""
    import json

    from empathy_nlg.perception.cause import SPAN_HEAD
    from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR

    path = DEFAULT_ARTIFACTS_DIR / f"{SPAN_HEAD}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: cause_gated's word labels come from perception's cause span head "
                                "(`empathy-nlg train-perception --task cause`)")
    cfg = json.loads(path.read_text())
    return {"version": cfg.get("version"), "threshold": cfg.get("threshold"), "train_tokens": cfg.get("train_tokens")}


class CauseGatedRecipe(C.TrainingRecipe):
    """What ``empathy-nlg train --generator cause_gated`` needs from this module."""

    model_class = CauseGatedModel
    NEEDS_CM = False  # no communication-mechanism signal

    def feature_extra(self, settings: CauseGatedSettings, config: TrainSettings, encoder, out_dir: Path):
        """Adds ``cause_words`` (the span head's word probabilities in the cause utterances of the
        prompt's turns) to every feature; none for the ``gate`` ablation (no gates, no cause task)."""
        if not settings.gate:
            return None, None
        key = {"cause_words": span_head_key(), "turns": settings.context_turns}

        def add(feats: List[Dict[str, Any]], progress: bool) -> None:
            annotate_cause_words(feats, encoder, SpanScorer.load(encoder=encoder), settings.context_turns, progress)

        return add, key

    def validation_extra(self, model: CauseGatedModel, valid_feats: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """Logged beside the validation perplexity: the reasoner's emotion accuracy and cause F1."""
        return model.reasoner_scores(valid_feats)


RECIPE = CauseGatedRecipe()
