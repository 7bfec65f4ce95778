"""The emotion classifier with its own fine-tuned encoder: all-mpnet-base-v2 + a LoRA adapter.

Why (issue #16: "every head sits on a frozen MiniLM, which caps what it can learn"; issue #10:
replies of the wrong polarity): the frozen-encoder emotion head reads chat-register good news as
bad ("landlord emailed back. we got the place" → angry, "I passed." → anxious). An encoder trained
end to end on the emotion task reads them better; blended 50/50 with the frozen head (the served
``perception.emotion_tuned_weight``), ED valid accuracy 49.8 → 54.9 and the polarity of the dev chat
scripts' turns 81 → 91 % after half an epoch (the perception model card has every measurement).

Model: the base sentence encoder (default all-mpnet-base-v2, the crisis classifier's; the tests use
the packaged MiniLM) with LoRA (rank 8) on every attention and feed-forward projection of every
layer, mean pooled and L2-normalised, then one linear layer to the 32 ED emotions (logits =
``scale`` × the product with the normalised embedding). Polarity is MIME's group sum, as for the
frozen head (:func:`empathy_nlg.perception.emotion.result_from_probs`).

Input view (:func:`story_text`): the user's (speaker's) turns of the dialogue joined in order,
truncated to ``max_length`` tokens. In ED the speaker's first turns state the situation, and the
label is the conversation's emotion, so the model learns the emotion of the *story*, which is what
a reply should answer (the listener turns are left out: they echo the user and would teach it the
listener's words).

Training (:func:`train_emotion_tuned`, ``empathy-nlg train-perception --task emotion_tuned``): each
ED train conversation gives its first speaker turn and, when there are several, all its speaker
turns joined; each ED situation prompt gives its text; all labelled with the conversation's emotion.
The order is one seeded shuffle, so a run can stop after ``max_minutes`` and resume where it stopped
(``--resume``; the optimiser restarts with a short warm-up). Every chunk ends with the dev measure
(ED valid, one story per conversation) and saves the adapter, the head and the position in
``--run-dir``; the served artefact (``emotion_encoder/`` + ``emotion_tuned_head.*``, whose head file
carries the same state) is replaced only by a chunk whose dev accuracy is better — the accuracy of
what is served: with the frozen head's dev probabilities given (``frozen_dev``) and a blend weight,
the chunk's blend is compared with the served model's blend, both measured on the same dev stories
(a chunk that is better alone can make the served blend worse: the seventeenth session's chunk did,
52.26 → 52.29 alone but 54.93 → 54.39 blended). A resumed run goes
on from ``--run-dir`` when it holds a chunk (this machine), else from the served artefact (a fresh
checkout: a later chunk that was not better is then trained again).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from empathy_nlg.datasets import Conversation, LabelledText, Utterance
from empathy_nlg.taxonomy import EMOTION_TO_ID, EMOTIONS

ADAPTER_DIR = "emotion_encoder"
HEAD = "emotion_tuned_head"
VERSION = "mpnet-lora-emotion-v1"
STATE_FILE = "state.json"


def story_text(dialogue: Sequence[Utterance]) -> str:
    """The user's turns joined in order (all turns when none is the user's)."""
    speaker = [u.text.strip() for u in dialogue if u.role == "speaker" and u.text.strip()]
    if not speaker:
        speaker = [u.text.strip() for u in dialogue if u.text.strip()]
    return " ".join(speaker)


def training_examples(convs: Sequence[Conversation], situations: Sequence[LabelledText], seed: int) -> List[Tuple[str, int]]:
    """(text, emotion id) pairs in one seeded order (see the module doc); the same inputs and seed
    always give the same order, which is what lets a run resume at a position."""
    out: List[Tuple[str, int]] = []
    for conv in convs:
        label = EMOTION_TO_ID[conv.emotion]
        speaker = [u for u in conv.turns if u.role == "speaker" and u.text.strip()]
        if not speaker:
            continue
        out.append((speaker[0].text.strip(), label))
        if len(speaker) > 1:
            out.append((story_text(speaker), label))
    out.extend((s.text.strip(), EMOTION_TO_ID[s.label]) for s in situations if s.text.strip() and s.label in EMOTION_TO_ID)
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


def dev_examples(convs: Sequence[Conversation]) -> List[Tuple[str, int]]:
    """One story per ED valid conversation (its speaker turns joined) with its emotion id."""
    stories = ((story_text(c.turns), EMOTION_TO_ID[c.emotion]) for c in convs)
    return [(text, label) for text, label in stories if text]


class TunedEmotion:
    """Emotion probabilities of a dialogue's story from the LoRA-tuned encoder and its linear head."""

    def __init__(self, encoder, head, config: dict) -> None:
        self.encoder = encoder  # a :class:`~empathy_nlg.perception.crisis_encoder.TunedEncoder`
        self.head = head
        self.config = config
        self.scale = float(config.get("scale", 20.0))
        self.version = str(config.get("version", VERSION))
        self.autocast = bool(config.get("autocast", False))
        if list(config.get("labels", EMOTIONS)) != list(EMOTIONS):
            raise ValueError(f"{HEAD} was trained on a different label set than taxonomy.EMOTIONS")

    @classmethod
    def fresh(cls, encoder_path: Optional[Path | str], r: int = 8, max_length: int = 64, scale: float = 20.0,
              device: Optional[str] = None) -> "TunedEmotion":
        from empathy_nlg.perception.crisis_encoder import fresh_linear_model

        enc, head, config = fresh_linear_model(encoder_path, ADAPTER_DIR, len(EMOTIONS), VERSION, r=r,
                                               max_length=max_length, scale=scale, device=device)
        return cls(enc, head, {**config, "labels": list(EMOTIONS)})

    @classmethod
    def load(cls, art_dir: Path | str, encoder_path: Optional[Path | str], device: Optional[str] = None,
             trainable: bool = False, autocast: Optional[bool] = None) -> "TunedEmotion":
        """The adapter and head in ``art_dir`` on the base encoder at ``encoder_path`` (merged for
        serving, or a LoRA model to train further). ``autocast``: bf16 inference (default: where the
        CPU multiplies bf16 natively, or on CUDA) — for serving, the merged weights are stored in bf16."""
        from empathy_nlg.hardware import serving_dtype
        from empathy_nlg.perception.common import load_head
        from empathy_nlg.perception.crisis_encoder import TunedEncoder

        head, config = load_head(Path(art_dir), HEAD)
        enc = TunedEncoder.load(art_dir, encoder_path, device, adapter_dir=ADAPTER_DIR, trainable=trainable)
        enc.max_length = int(config.get("max_length", 64))
        if autocast is None:
            autocast = serving_dtype("auto", str(enc.device)) == "bfloat16"
        if autocast and not trainable:
            # serving: the merged weights themselves in bf16 (autocast would cast them on every call:
            # measured 2× slower per message on an AMX CPU); the head stays float32
            import torch

            enc.model = enc.model.to(torch.bfloat16)
            autocast = False
        return cls(enc, head, {**config, "autocast": autocast})

    def save(self, out_dir: Path | str, extra: Optional[dict] = None) -> None:
        from empathy_nlg.perception.common import save_head

        out_dir = Path(out_dir)
        self.encoder.save(out_dir, half=True)  # fp16: half the bytes of every committed chunk
        config = {k: v for k, v in self.config.items() if k != "autocast"}
        save_head(self.head, {**config, **(extra or {})}, out_dir, HEAD)

    def logits(self, texts: Sequence[str]):
        """Logits with gradients (training); texts are stories (:func:`story_text`)."""
        return self.head(self.encoder.forward(list(texts)).float() * self.scale)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """``(len(texts), 32)`` probabilities (inference mode, bf16 autocast when configured)."""
        import contextlib

        import torch

        self.encoder.model.eval()
        self.head.eval()
        rows = []
        cast = torch.autocast(self.encoder.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            for start in range(0, len(texts), batch_size):
                rows.append(torch.softmax(self.logits(texts[start : start + batch_size]).float(), -1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, len(EMOTIONS)), dtype=np.float32)

    def predict_dialogues(self, dialogues: Sequence[Sequence[Utterance]]) -> np.ndarray:
        return self.predict_proba([story_text(d) or "." for d in dialogues])


def train_emotion_tuned(train_convs: Sequence[Conversation], situations: Sequence[LabelledText],
                        dev_convs: Sequence[Conversation], out_dir: Path, run_dir: Path,
                        encoder_path: Optional[Path | str], seed: int = 13, max_minutes: Optional[float] = None,
                        resume: bool = False, batch_size: int = 32, lr: float = 4e-4, head_lr: float = 3e-3,
                        r: int = 8, max_length: int = 64, max_dev: Optional[int] = None,
                        frozen_dev: Optional[np.ndarray] = None, blend_weight: float = 0.0,
                        progress: bool = True) -> Dict[str, object]:
    """Train one chunk (see the module doc); returns the chunk's summary and dev metrics.

    ``frozen_dev``: the frozen emotion head's probabilities, one row per conversation of
    ``dev_convs``; with ``blend_weight`` > 0 the served artefact is replaced only when the chunk's
    blend ``(1 - w) * frozen + w * tuned`` beats the served model's blend on the same stories."""
    import contextlib

    import torch

    from empathy_nlg.hardware import serving_dtype

    t_start = time.time()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    examples = training_examples(train_convs, situations, seed)
    dev = dev_examples(dev_convs)[: max_dev or None]
    blend = None
    if frozen_dev is not None and blend_weight > 0:
        if len(frozen_dev) != len(dev_convs):
            raise ValueError(f"frozen_dev has {len(frozen_dev)} rows for {len(dev_convs)} dev conversations")
        kept = [i for i, c in enumerate(dev_convs) if story_text(c.turns)][: len(dev)]  # dev_examples' rows
        frozen, w = np.asarray(frozen_dev)[kept], float(blend_weight)
        blend = lambda tuned: (1.0 - w) * frozen + w * tuned  # noqa: E731
    state = {"seen": 0, "epoch": 0, "steps": 0, "chunks": []}
    if resume:
        source, state = resume_state(run_dir, out_dir)
        if state.get("examples") != len(examples) or state.get("seed") != seed:
            raise ValueError(f"--resume: {source} was trained on {state.get('examples')} examples with seed "
                             f"{state.get('seed')}, this data gives {len(examples)} with seed {seed}")
        model = TunedEmotion.load(source, encoder_path, trainable=True, autocast=False)
    else:
        torch.manual_seed(seed)
        model = TunedEmotion.fresh(encoder_path, r=r, max_length=max_length)
    torch.manual_seed(seed + int(state["steps"]))
    params = [p for p in model.encoder.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "lr": lr}, {"params": list(model.head.parameters()), "lr": head_lr}],
                            weight_decay=1e-3)
    warm = 20
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    use_bf16 = serving_dtype("auto", str(model.encoder.device)) == "bfloat16"  # CUDA, or a CPU with native bf16
    cast = (lambda: torch.autocast(model.encoder.device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    position = int(state["seen"]) % len(examples)
    chunk_steps, running, stopped = 0, 0.0, False
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), initial=position, desc=f"emotion fine-tune, epoch {state['epoch'] + 1}", unit="ex")
    while not stopped:
        model.encoder.model.train()
        model.head.train()
        batch = examples[position : position + batch_size]
        with cast():
            logits = model.logits([t for t, _ in batch])
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.as_tensor([y for _, y in batch]), label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        chunk_steps += 1
        running += float(loss.detach())
        position += len(batch)
        state["seen"] = int(state["seen"]) + len(batch)
        state["steps"] = int(state["steps"]) + 1
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix(loss=f"{running / chunk_steps:.3f}")
        if position >= len(examples):
            position, state["epoch"] = 0, int(state["epoch"]) + 1
            if bar is not None:
                bar.reset()
                bar.set_description(f"emotion fine-tune, epoch {state['epoch'] + 1}")
        stopped = max_minutes is not None and time.time() - t_start > 60 * max_minutes
        if max_minutes is None and state["epoch"] >= 1 and position == 0:
            stopped = True  # without a time limit: one epoch
    if bar is not None:
        bar.close()
    from empathy_nlg.perception.emotion import emotion_metrics

    labels = np.asarray([y for _, y in dev])
    tuned_dev = model.predict_proba([t for t, _ in dev])
    metrics = emotion_metrics(tuned_dev, labels)
    chunk = {"steps": chunk_steps, "train_loss": round(running / max(chunk_steps, 1), 4), "seen": state["seen"],
             "epochs": round(state["seen"] / len(examples), 3), "minutes": round((time.time() - t_start) / 60, 1),
             "dev": {k: round(v, 2) for k, v in metrics.items()}}
    if blend is not None:
        chunk["dev_blend"] = {"weight": blend_weight,
                              **{k: round(v, 2) for k, v in emotion_metrics(blend(tuned_dev), labels).items()}}
    state.update({"examples": len(examples), "seed": seed, "dev_examples": len(dev)})
    state["chunks"] = list(state.get("chunks", [])) + [chunk]
    extra = {"training": state, "dev": chunk["dev"], "dev_examples": len(dev),
             **({"dev_blend": chunk["dev_blend"]} if blend is not None else {})}
    model.save(run_dir, extra)
    (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    served = out_dir / f"{HEAD}.json"
    if blend is None:  # the tuned model alone is what would be served
        mine = metrics["accuracy"]
        before = json.loads(served.read_text()).get("dev", {}).get("accuracy") if served.is_file() else None
    else:  # the blend is served: both blends measured now, on the same stories, each model as served
        def served_blend(art_dir: Path) -> float:
            as_served = TunedEmotion.load(art_dir, encoder_path, device=str(model.encoder.device))
            return emotion_metrics(blend(as_served.predict_proba([t for t, _ in dev])), labels)["accuracy"]

        mine = served_blend(run_dir)
        before = round(served_blend(out_dir), 2) if served.is_file() else None
    replaced = before is None or round(mine, 2) > float(before)
    if replaced:  # the chunk just saved becomes the served artefact: copied, not written again
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out_dir / ADAPTER_DIR, ignore_errors=True)
        shutil.copytree(run_dir / ADAPTER_DIR, out_dir / ADAPTER_DIR)
        for suffix in (".json", ".safetensors"):
            shutil.copyfile(run_dir / f"{HEAD}{suffix}", out_dir / f"{HEAD}{suffix}")
    return {**chunk, "compared": "blend" if blend is not None else "tuned alone", "compared_accuracy": round(mine, 2),
            "served_before": before, "served_replaced": replaced, "examples": len(examples)}


def default_weight() -> float:
    """``perception.emotion_tuned_weight`` of the engine's default settings (0 when unset): the
    blend that is served, which ``bench-perceive`` and ``eval-perception`` measure by default."""
    from empathy_nlg.settings import served_perception

    return float(served_perception("emotion_tuned_weight") or 0.0)


def resume_state(run_dir: Path, out_dir: Path) -> Tuple[Path, dict]:
    """Where a resumed run continues from: the latest chunk in ``run_dir`` (this machine), else the
    served artefact in ``out_dir`` (what a fresh checkout has), with its training state."""
    if (Path(run_dir) / STATE_FILE).is_file():
        return Path(run_dir), json.loads((Path(run_dir) / STATE_FILE).read_text())
    head = Path(out_dir) / f"{HEAD}.json"
    training = json.loads(head.read_text()).get("training") if head.is_file() else None
    if isinstance(training, dict):
        return Path(out_dir), training
    raise FileNotFoundError(f"--resume: no {STATE_FILE} in {run_dir} and no trained {HEAD} in {out_dir} "
                            "(train a first chunk without --resume)")
