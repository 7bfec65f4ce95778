"""The Perceiver: one object the server and the evaluation harness use for all of perception.

One MiniLM pass over the dialogue's (unique) utterances gives contextual token states; their
masked mean (normalised) is the sentence embedding every head shares:

* emotion head  ← 4-view dialogue feature → 32 ED emotions + MIME polarity; with a fine-tuned
  emotion encoder (``perception.emotion_tuned_weight`` > 0, see
  :mod:`empathy_nlg.perception.emotion_tuned`) its distribution is blended with that model's, which
  reads the user's story with its own LoRA-tuned all-mpnet-base-v2,
* CM context head ← the same dialogue feature → P(ER), P(IP), P(EX) for the reply,
* cause pair head ← (last speaker turn, each earlier speaker turn, predicted emotion word),
  cause span head ← token states of the chosen cause utterances → character spans,
* crisis detector ← the user's latest message in the context of their previous ones: a trained
  classifier on the shared embeddings, with curated patterns as a floor.

Only the most recent ``max_turns`` utterances are encoded (older turns cannot be causes), so the
cost of a call is bounded whatever the dialogue length. Encoder outputs are kept in a small LRU
cache keyed by utterance text (``cache_size`` entries): in a live conversation every earlier turn
was already encoded by the previous call, so a call usually encodes only the new turns.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from empathy_nlg.dialogue import ROLES, Utterance
from empathy_nlg.perception.cause import CauseModel
from empathy_nlg.perception.cm import ContextCMPredictor
from empathy_nlg.perception.common import DEFAULT_ARTIFACTS_DIR
from empathy_nlg.perception.crisis import CrisisDetector
from empathy_nlg.perception.crisis_mpnet import ENCODER_NAME as DEFAULT_CRISIS_ENCODER
from empathy_nlg.perception.emotion import EmotionClassifier, dialogue_features, result_from_probs
from empathy_nlg.perception.types import CauseUtterance, Perception
from empathy_nlg.taxonomy import CM_CODES


class Perceiver:
    """Emotion, causes, communication mechanisms and crisis flag for a dialogue."""

    def __init__(self, encoder, emotion: EmotionClassifier, cause: CauseModel, cm: ContextCMPredictor,
                 crisis: CrisisDetector, max_turns: int = 12, cache_size: int = 1024,
                 tuned_emotion=None, tuned_weight: float = 0.0) -> None:
        if tuned_emotion is not None and not 0.0 < tuned_weight <= 1.0:
            raise ValueError(f"tuned_weight must be in (0, 1] with a tuned emotion model, got {tuned_weight}")
        self.encoder = encoder
        #: the fine-tuned emotion model (:class:`~empathy_nlg.perception.emotion_tuned.TunedEmotion`) and
        #: the weight of its distribution in the blend with the frozen head's (None: the head alone)
        self.tuned_emotion = tuned_emotion
        self.tuned_weight = float(tuned_weight) if tuned_emotion is not None else 0.0
        self.cache_size = cache_size
        self._cache: "OrderedDict[str, Tuple[np.ndarray, np.ndarray, List[Tuple[int, int]]]]" = OrderedDict()
        self.emotion = emotion
        self.cause = cause
        self.cm = cm
        self.crisis = crisis
        if crisis.embed is None:  # the classifier embeds message chunks and context through the shared cache
            crisis.embed = self.embed
        self.max_turns = max_turns
        self.versions: Dict[str, str] = {
            "encoder": encoder.name,
            "emotion": emotion.version,
            "cause": cause.version,
            "cm": cm.version,
            "crisis": crisis.version,
        }
        if crisis.large is not None:
            self.versions["crisis_encoder"] = crisis.large.name
        if tuned_emotion is not None:
            self.versions["emotion"] = f"{emotion.version}+{tuned_emotion.version}@{self.tuned_weight:g}"

    @classmethod
    def load(cls, artifacts_dir: Path | None = None, encoder_path: Path | str | None = None,
             device: str | None = None, crisis_encoder: str | None = None, crisis_dtype: str = "float32",
             emotion_tuned_weight: float = 0.0, emotion_tuned_base: str | None = None) -> "Perceiver":
        """Load the committed heads from ``artifacts_dir`` and the packaged encoder (a few seconds).

        ``crisis_encoder``: the crisis classifier's larger encoder (the ``perception.crisis_encoder``
        setting, e.g. :data:`DEFAULT_CRISIS_ENCODER`; None: the MiniLM crisis head alone — what tools
        that do not judge crises use). Configured but missing, it falls back with a warning.
        ``crisis_dtype``: its weights' dtype (``perception.crisis_encoder_dtype``).
        ``emotion_tuned_weight`` > 0: blend the fine-tuned emotion model (its adapter in the artefacts,
        on the prepared encoder ``emotion_tuned_base``, default the one it was trained on) in with that
        weight; missing, the frozen head decides alone, with a logged warning."""
        from empathy_nlg.perception.encoder import SentenceEncoder

        art = Path(artifacts_dir) if artifacts_dir else DEFAULT_ARTIFACTS_DIR
        if not art.is_dir():
            raise FileNotFoundError(f"perception artefacts folder {art} does not exist")
        settings = {}
        if (art / "perceiver.json").is_file():
            settings = json.loads((art / "perceiver.json").read_text())
        encoder = SentenceEncoder(encoder_path, device=device)
        return cls(
            encoder=encoder,
            emotion=EmotionClassifier.load(art),
            cause=CauseModel.load(art),
            cm=ContextCMPredictor.load(art),
            crisis=CrisisDetector.load(art, encoder_path=encoder_path, device=device, crisis_encoder=crisis_encoder,
                                          crisis_dtype=crisis_dtype),
            max_turns=int(settings.get("max_turns", 12)),
            cache_size=int(settings.get("cache_size", 1024)),
            tuned_emotion=load_tuned_emotion(art, emotion_tuned_base, device) if emotion_tuned_weight > 0 else None,
            tuned_weight=emotion_tuned_weight,
        )

    # -- encoding -------------------------------------------------------------------------

    def _encode(self, texts: Sequence[str], batch_size: int) -> Tuple[np.ndarray, List[np.ndarray], List[List[Tuple[int, int]]]]:
        """Sentence embeddings + token states/offsets per text: LRU-cached ones + one pass for the rest."""
        texts = [t if t.strip() else "." for t in texts]
        todo = [t for t in texts if t not in self._cache]
        if todo:
            pooled, hidden, offsets = self._encode_uncached(todo, batch_size)
            for k, t in enumerate(todo):
                self._cache[t] = (pooled[k], hidden[k], offsets[k])
        out_p, out_h, out_o = [], [], []
        for t in texts:
            p, h, o = self._cache[t]
            self._cache.move_to_end(t)
            out_p.append(p)
            out_h.append(h)
            out_o.append(o)
        while len(self._cache) > max(self.cache_size, len(texts)):
            self._cache.popitem(last=False)
        return np.stack(out_p), out_h, out_o

    def _encode_uncached(self, texts: Sequence[str], batch_size: int) -> Tuple[np.ndarray, List[np.ndarray], List[List[Tuple[int, int]]]]:
        """Sentence embeddings + per-text token states and offsets, one encoder pass."""
        import torch

        pooled = np.zeros((len(texts), self.encoder.dim), dtype=np.float32)
        hidden_out: List[np.ndarray] = [np.zeros((0, self.encoder.dim), dtype=np.float32)] * len(texts)
        offsets_out: List[List[Tuple[int, int]]] = [[] for _ in texts]
        order = np.argsort([len(t) for t in texts])[::-1]
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            hidden, mask, offsets = self.encoder.token_embeddings([texts[i] for i in idx])
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled_t = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)
            pooled[idx] = pooled_t.float().cpu().numpy()
            hidden_np = hidden.float().cpu().numpy()
            lengths = mask.sum(1).cpu().numpy()
            for k, i in enumerate(idx):
                n = int(lengths[k])
                hidden_out[i] = hidden_np[k, :n]
                offsets_out[i] = [tuple(map(int, o)) for o in offsets[k, :n].tolist()]
        return pooled, hidden_out, offsets_out

    # -- public API -----------------------------------------------------------------------

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings (L2-normalised) of ``texts``, sharing the perception LRU cache:
        a user message perceived a moment ago costs nothing here."""
        if not len(texts):
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return self._encode(list(texts), batch_size)[0]


    def crisis_check(self, dialogue: Sequence[Utterance]):
        """The crisis detector alone on the dialogue's last window (the user's turns; embeddings from
        the shared cache): what the engine runs itself before trusting a client's copy of perception."""
        window = list(dialogue)[-self.max_turns:]
        texts = [u.text for u in window if u.role == "speaker"]
        return self.crisis.detect(texts, self.embed([t if t.strip() else "." for t in texts]) if texts else None)

    def perceive(self, dialogue: Sequence[Utterance]) -> Perception:
        """Perception of one dialogue (it should end with the user's speaker turn)."""
        return self.perceive_batch([dialogue])[0]

    def perceive_batch(self, dialogues: Sequence[Sequence[Utterance]], batch_size: int = 32) -> List[Perception]:
        """Perception of many dialogues with one encoder pass over all their unique utterances."""
        if not dialogues:
            return []
        windows: List[Tuple[int, List[Utterance]]] = []
        for n, dlg in enumerate(dialogues):
            dlg = list(dlg)
            if not dlg:
                raise ValueError(f"dialogue {n} is empty")
            for u in dlg:
                if u.role not in ROLES:
                    raise ValueError(f"dialogue {n}: role {u.role!r} is not one of {ROLES}")
            start = max(0, len(dlg) - self.max_turns)
            windows.append((start, dlg[start:]))
        texts = sorted({u.text if u.text.strip() else "." for _, w in windows for u in w})
        index = {t: i for i, t in enumerate(texts)}
        emb, hidden, offsets = self._encode(texts, batch_size)
        rows = [[index[u.text if u.text.strip() else "."] for u in w] for _, w in windows]
        feats = np.stack([dialogue_features([u.role for u in w], emb[r]) for (_, w), r in zip(windows, rows)])
        speakers = [[i for i, u in enumerate(w) if u.role == "speaker"] for _, w in windows]
        crises = [self.crisis.detect([w[i].text for i in pos], emb[r][pos] if pos else None)
                  for (_, w), r, pos in zip(windows, rows, speakers)]
        emo_probs = self.emotion.predict_proba(feats)
        # A message the crisis detector flags or is concerned about keeps the frozen head's reading:
        # the safety check-in is asked on concern *and* a negative feeling, and the tuned model reads
        # a plan as calm resolve ("bought the rope today. the beam will hold, I checked" → prepared,
        # a positive emotion in MIME's groups): blended in, it cost 14 check-ins on the held-out
        # crisis sets (perception model card). Ordinary chat, where it pays, gets the blend — and only
        # those windows are read by the tuned model.
        blended = [k for k, c in enumerate(crises) if not (c.crisis or c.concern)]
        if self.tuned_emotion is not None and blended:
            tuned = self.tuned_emotion.predict_dialogues([windows[k][1] for k in blended])
            emo_probs[blended] = (1.0 - self.tuned_weight) * emo_probs[blended] + self.tuned_weight * tuned
        cm_probs = self.cm.predict_proba(feats)
        out: List[Perception] = []
        for (offset, window), r, speaker_pos, p_emo, p_cm, crisis in zip(windows, rows, speakers, emo_probs, cm_probs, crises):
            E = emb[r]
            roles = [u.role for u in window]
            emo = result_from_probs(p_emo)
            causes: List[CauseUtterance] = []
            if speaker_pos:
                target = speaker_pos[-1]
                scores = self.cause.score_candidates(E, roles, target, speaker_pos, emo.emotion)
                chosen = [k for k, s in enumerate(scores) if s >= self.cause.ed_threshold]
                if not chosen:  # every ED dialogue has a cause: keep the most likely one
                    chosen = [int(np.argmax(scores))]
                for k in chosen:
                    pos = speaker_pos[k]
                    t_idx = r[pos]
                    spans = self.cause.token_spans(window[pos].text, hidden[t_idx], offsets[t_idx], E[target], emo.emotion)
                    causes.append(CauseUtterance(index=offset + pos, text=window[pos].text, score=round(float(scores[k]), 4), spans=spans))
            out.append(
                Perception(
                    emotion=emo.emotion,
                    emotion_probs=emo.probs,
                    polarity=emo.polarity,
                    polarity_prob=emo.polarity_prob,
                    causes=causes,
                    cm={c: float(v) for c, v in zip(CM_CODES, p_cm)},
                    crisis=crisis.crisis,
                    crisis_score=crisis.score,
                    crisis_reasons=crisis.reasons,
                    crisis_concern=crisis.concern,
                    models=dict(self.versions),
                )
            )
        return out


def load_tuned_emotion(art: Path, base: Optional[str] = None, device: Optional[str] = None):
    """The fine-tuned emotion model in ``art`` on the encoder ``base`` (a path, or a prepared encoder's
    name; default: the one it was trained on), or None with a
    warning saying why (never raises: perception then runs on the frozen head alone)."""
    import logging

    from empathy_nlg.perception.crisis_mpnet import is_prepared, resolve
    from empathy_nlg.perception.emotion_tuned import ADAPTER_DIR, HEAD, TunedEmotion

    log = logging.getLogger(__name__)
    if not (art / ADAPTER_DIR / "adapter_config.json").is_file() or not (art / f"{HEAD}.json").is_file():
        log.warning("no fine-tuned emotion model in %s: emotion from the frozen head alone "
                    "(train one: empathy-nlg train-perception --task emotion_tuned)", art)
        return None
    if base is None:  # the encoder it was trained on (a folder name under the prepared encoders)
        base = json.loads((art / f"{HEAD}.json").read_text()).get("base_encoder")
    path = resolve(base)
    if path is None or not is_prepared(path):
        log.warning("the fine-tuned emotion model's base encoder %s is not prepared (empathy-nlg prepare-encoder): "
                    "emotion from the frozen head alone", base)
        return None
    try:
        return TunedEmotion.load(art, path, device=device)
    except Exception as exc:  # a broken artefact must not stop the server: the frozen head still answers
        log.warning("could not load the fine-tuned emotion model (%s: %s): emotion from the frozen head alone",
                    type(exc).__name__, exc)
        return None
