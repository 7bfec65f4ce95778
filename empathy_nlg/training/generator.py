"""``empathy-nlg train --generator NAME --config FILE``: train a generator's adapters and heads.

The config (YAML, validated by ``empathy_nlg/config/train.schema.json`` and read as
:class:`empathy_nlg.settings.TrainSettings`; see ``configs/train/*.yml``) names the data, the
cause source, the knowledge source, the generator's settings (incl. ablation switches), LoRA and
the optimiser schedule. Under ``torchrun`` the same command trains on several processes
(:mod:`empathy_nlg.training.distributed`). A run lives in ``out_dir``:

* ``features-{train-base,valid}-<fingerprint>.jsonl`` — the conditioning inputs, built once (in
  ``features_dir`` when set, so ablation runs share them); ``extras-train-<fingerprint>.jsonl`` —
  the generator's own training features (knowledge, persona, …), built only for the examples of the
  batches from the run's start or resume step to ``max_steps`` and added to by later runs;
* ``checkpoint/`` — adapters + heads + optimiser + progress, written every ``checkpoint_every``
  steps, when ``max_minutes`` is reached and on Ctrl-C (atomic: a crash never leaves half a
  checkpoint); ``--resume`` continues from it with the same data order;
* ``log.jsonl`` — one line per logged step (a new run in a folder that has one from an earlier run
  moves that one to ``log.previous.jsonl``); ``final/`` (or ``export_dir``) — the trained model in
  fp16 (the best validation point when the run validates), with the training summary in
  ``generator.json``; ``--export-last`` writes the checkpoint (the last step) there instead.

The per-paper parts come from the generator module's ``RECIPE`` (features it adds, how to build,
load and score the model). CUDA is used when present (``device: auto``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from empathy_nlg.paths import default_data_dir
from empathy_nlg.registry import Registry
from empathy_nlg.settings import TrainSettings

log = logging.getLogger(__name__)

#: generator name → its training recipe (the ``RECIPE`` of the generator's module)
RECIPES: Registry[Any] = Registry("training recipe", {name: f"empathy_nlg.generators.{name}:RECIPE"
                                                      for name in ("finetuned", "imagine", "nec", "mime", "cause_gated",
                                                                   "persona_moel")})
#: batches are formed within windows of this many batches, sorted by length (little padding), and
#: the batches of an epoch are then shuffled
BUCKET_WINDOW = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", required=True, choices=RECIPES.names(), help="which generator to train")
    parser.add_argument("--config", required=True, help="training config (YAML); see configs/train/")
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoint")
    parser.add_argument("--out-dir", default=None, help="override out_dir of the config")
    parser.add_argument("--export-dir", default=None, help="override export_dir of the config")
    parser.add_argument("--max-steps", type=int, default=None, help="override optim.max_steps")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    parser.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                        help="start from another run's checkpoint folder (weights, optimiser, step) with this config's settings")
    parser.add_argument("--ablate", action="append", default=[], metavar="PART",
                        help="switch a part off (imagine: cause, cm, knowledge, face; nec: entity, social, "
                        "neg_d, neg_y, neg_b, neg_h; mime: mimicry, stochastic, grouping; cause_gated: gate, emotion; "
                        "persona_moel: persona, experts); "
                        "repeatable; "
                        "out_dir gets a -no-PART suffix")
    parser.add_argument("--export-last", action="store_true",
                        help="train nothing: export the run's checkpoint (its last step) to final/ (or --export-dir) "
                        "like a finished run's best model, e.g. when the harness prefers the end of an epoch")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def recipe_for(generator: str):
    return RECIPES.get(generator)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _order(n: int, seed: int, epoch: int) -> List[int]:
    idx = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(idx)
    return idx


def _batch_at(step: int, n: int, batch_size: int, seed: int, lengths: Optional[Sequence[int]] = None) -> List[int]:
    """Indices of the examples of ``step`` (deterministic: a resumed run sees the same batches).

    With ``lengths``, batches are length-bucketed: the epoch's shuffled order is cut into windows
    of :data:`BUCKET_WINDOW` batches, each window sorted by length and cut into batches, and the
    batches of the epoch are shuffled — every example once per epoch, little padding."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = _order(n, seed, epoch)
    if lengths is None:
        return order[pos * batch_size : (pos + 1) * batch_size]
    batches = _bucketed_batches(order[: per_epoch * batch_size], batch_size, lengths, seed, epoch)
    return batches[pos]


_BUCKETS: Dict[tuple, List[List[int]]] = {}


def _bucketed_batches(order: List[int], batch_size: int, lengths: Sequence[int], seed: int, epoch: int) -> List[List[int]]:
    key = (len(order), batch_size, seed, epoch, hash(tuple(lengths)))
    if key not in _BUCKETS:
        _BUCKETS.clear()
        window = batch_size * BUCKET_WINDOW
        batches: List[List[int]] = []
        for w in range(0, len(order), window):
            part = sorted(order[w : w + window], key=lambda i: lengths[i])
            batches.extend(part[b : b + batch_size] for b in range(0, len(part), batch_size))
        random.Random(seed * 7919 + epoch).shuffle(batches)
        _BUCKETS[key] = batches
    return _BUCKETS[key]


def example_length(feature: Mapping[str, Any], turns: int = 2) -> int:
    """A cheap length proxy (characters of the last turns and the reply) for bucketing."""
    return sum(len(t) for _, t in list(feature["context"])[-turns:]) + len(feature["reference"])


def _save_checkpoint(model, optimizer, out_dir: Path, state: Mapping[str, Any], rng_state=None) -> None:
    """Model, optimiser, the RNG state at the start of the next step and the progress; state.json
    is written last, so a checkpoint without it is ignored."""
    import torch

    ckpt = out_dir / "checkpoint"
    model.save(ckpt, extra={"checkpoint": dict(state)})
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state if rng_state is not None else torch.get_rng_state()},
               ckpt / "optimizer.pt.partial")
    os.replace(ckpt / "optimizer.pt.partial", ckpt / "optimizer.pt")
    (ckpt / "state.json").write_text(json.dumps(dict(state), indent=2))


def _utc_stamp() -> str:
    """``trained_at`` of a saved model: now, UTC, to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _export_best(best_dir: Path, export_dir: Path, summary: Mapping[str, Any]) -> None:
    """Copy ``best/`` to ``export_dir`` with the run's summary in its ``generator.json``."""
    import shutil

    from empathy_nlg.generators import conditioned as C

    tmp = export_dir.with_name(export_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(best_dir, tmp)
    config = json.loads((tmp / C.CONFIG_FILE).read_text())
    config.update(training=json.loads(json.dumps(summary, default=str)), trained_at=summary["trained_at"])
    (tmp / C.CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(export_dir, ignore_errors=True)
    tmp.rename(export_dir)


def _run_dirs(config: TrainSettings, settings) -> Tuple[Path, Path]:
    """A run's folder and the folder its model is exported to (``final/`` inside it by default)."""
    out_dir = Path(config.out_dir or f"runs/{settings.variant}")
    return out_dir, Path(config.export_dir or out_dir / "final")


def export_last(config: TrainSettings | Mapping[str, Any]) -> Dict[str, Any]:
    """Export ``out_dir/checkpoint`` (the run's last step) to ``export_dir`` as a finished run exports
    its best point: adapter as trained, heads in fp16, the checkpoint's progress as the summary in
    ``generator.json``; optimiser and progress files are left behind. Returns the summary."""
    import shutil

    from safetensors.torch import load_file, save_file

    from empathy_nlg.generators import conditioned as C

    config = config if isinstance(config, TrainSettings) else TrainSettings.model_validate(config)
    out_dir, export_dir = _run_dirs(config, recipe_for(config.generator).settings_from(config.settings))
    ckpt = out_dir / "checkpoint"
    if not (ckpt / "state.json").is_file():
        raise FileNotFoundError(f"{ckpt} holds no complete checkpoint (state.json missing): nothing to export")
    state = json.loads((ckpt / "state.json").read_text())
    saved = C.read_trained_config(ckpt)
    if saved.get("generator") != config.generator:
        raise ValueError(f"{ckpt} holds a {saved.get('generator')!r} model, not a {config.generator!r} one")
    staging = export_dir.with_name(export_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(ckpt, staging, ignore=shutil.ignore_patterns("optimizer.pt*", "state.json"))
    save_file(C.half_floats(load_file(str(staging / C.HEADS_FILE))), str(staging / C.HEADS_FILE))
    saved.pop("checkpoint", None)
    (staging / C.CONFIG_FILE).write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    ppl = None  # the checkpoint step's validation PPL, when the log has it (a line cut by a kill is skipped)
    log_path = out_dir / "log.jsonl"
    for line in log_path.read_text().splitlines() if log_path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step") == state["step"] and "valid_ppl" in row:
            ppl = row["valid_ppl"]
    summary = {**state, "stopped": "exported", "exported_step": state["step"], "valid_ppl": ppl,
               "trained_at": _utc_stamp(), "config": config.model_dump(mode="json")}
    _export_best(staging, export_dir, summary)
    shutil.rmtree(staging, ignore_errors=True)
    return {**summary, "export_dir": str(export_dir), "export_mb": round(C.folder_megabytes(export_dir), 2)}


def validation_ppl(model, feats: Sequence[Mapping[str, Any]], batch_size: int) -> Optional[float]:
    """Perplexity of the gold replies of ``feats`` (reply tokens, teacher forcing)."""
    import torch

    if not feats:
        return None
    model.train(False)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(feats), batch_size):
            nll, n = model.reply_nll(feats[i : i + batch_size])
            total += nll
            count += n
    model.train(True)
    return math.exp(total / max(1, count))


def _new_model(recipe, config: TrainSettings, settings, backbone, encoder):
    """A fresh run's model: new, or starting from a trained model folder — its LoRA adapter alone
    (``init_adapter``: the heads are new) or its adapter and heads (``init_model``: a model of this
    generator trained further, e.g. on more data). Either way this config's settings build it."""
    from empathy_nlg.generators import conditioned as C

    if config.init_adapter and config.init_model:
        raise ValueError("give init_adapter or init_model, not both")
    key, start = next(((k, Path(v)) for k, v in (("init_adapter", config.init_adapter), ("init_model", config.init_model)) if v),
                      (None, None))
    if start is not None and not (start / C.ADAPTER_DIR).is_dir():
        raise FileNotFoundError(f"{key}: {start} holds no {C.ADAPTER_DIR}/ folder (give a trained model's folder)")
    if config.init_model:
        saved = C.read_trained_config(start).get("generator")
        if saved != config.generator:
            raise ValueError(f"init_model: {start} holds a {saved!r} model, not a {config.generator!r} one")
    model = recipe.new_model(settings, backbone, encoder, config.lora, adapter_dir=start)
    if config.init_model:
        C.load_heads(start, model.heads, backbone.device)
    return model


def train(config: TrainSettings | Mapping[str, Any], *, resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Run (or resume) one training run; returns the summary written next to the model."""
    import torch

    from empathy_nlg.training import features as FE
    from empathy_nlg.training.distributed import Distributed

    config = config if isinstance(config, TrainSettings) else TrainSettings.model_validate(config)
    job = Distributed()  # one process, or this process's share of a torchrun job
    recipe = recipe_for(config.generator)
    settings = recipe.settings_from(config.settings)
    out_dir, export_dir = _run_dirs(config, settings)
    optim = config.optim
    seed = config.seed
    data = config.data
    data_dir = default_data_dir() / "empathetic_dialogues"
    train_path = Path(data.train or data_dir / "train.jsonl")
    valid_path = Path(data.valid or data_dir / "valid.jsonl")
    if config.threads:
        torch.set_num_threads(config.threads)
    ckpt = out_dir / "checkpoint"
    if resume and not (ckpt / "state.json").is_file():
        raise FileNotFoundError(f"nothing to resume: {ckpt}/state.json does not exist")
    if not resume and (ckpt / "state.json").is_file():
        raise ValueError(f"{ckpt} already holds a checkpoint: pass --resume to continue it, or pick another out_dir")
    if optim.start_step and not resume and (config.init_from or not config.init_model):
        raise ValueError("optim.start_step continues an init_model's data order: give init_model (not init_from); "
                         "on --resume the checkpoint carries it")
    if optim.start_step >= optim.max_steps:
        raise ValueError(f"optim.start_step ({optim.start_step}) must be below optim.max_steps ({optim.max_steps})")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume and job.main and (out_dir / "log.jsonl").is_file():
        # a new run in a folder an earlier run (its checkpoint gone) logged to: its log would mix two runs
        (out_dir / "log.jsonl").replace(out_dir / "log.previous.jsonl")
        log.info("%s/log.jsonl holds an earlier run's log: moved to log.previous.jsonl", out_dir)
    random.seed(seed)
    torch.manual_seed(seed)

    from empathy_nlg.generators import conditioned as C
    from empathy_nlg.perception.encoder import SentenceEncoder

    # Training keeps the adapters in fp32 whatever the device ("auto" → float32 here).
    dtype = config.dtype
    device = config.device
    if job.enabled:
        wants_cuda = str(device).startswith("cuda") or (device in (None, "auto") and torch.cuda.is_available())
        device = job.start("cuda" if wants_cuda else "cpu")
    backbone = C.load_base(config.backbone_path, device=device,
                           dtype="float32" if dtype == "auto" else dtype)
    encoder = SentenceEncoder(device=backbone.device)
    causes = config.causes
    feat_dir = Path(config.features_dir or out_dir)
    extra, extra_key = recipe.feature_extra(settings, config, encoder, feat_dir)
    cm = getattr(recipe, "NEEDS_CM", True)
    if not job.main:
        job.barrier()  # rank 0 builds the feature cache (and NEC's fact scorer) first
    # the step this invocation starts at, so that the extra features (knowledge) are built only for
    # the batches still to train: a run resumed late in its epoch on a fresh machine needs few
    state_file = ckpt / "state.json" if resume else Path(config.init_from) / "state.json" if config.init_from else None
    from_step = (int(json.loads(state_file.read_text())["step"]) if state_file is not None and state_file.is_file()
                 else optim.start_step)

    def needed(feats: List[Dict[str, Any]]) -> List[int]:
        lengths = [example_length(f) for f in feats] if optim.bucket else None
        return [i for s in range(from_step, optim.max_steps)
                for i in _batch_at(s, len(feats), optim.batch_size * job.world, seed, lengths)]

    # a persona_share run chooses its examples by their mined persona: every example needs its extra
    train_feats = FE.build_features(train_path, data.max_train_examples, seed, causes, feat_dir, "train",
                                    extra=extra, extra_key=extra_key, progress=progress, cm=cm,
                                    needed=None if data.persona_share else needed)
    if data.persona_share:
        train_feats = FE.persona_selection(train_feats, data.persona_share, seed, data.persona_move_facts,
                                           data.persona_use_repeat, data.persona_move_first)
    valid_feats = FE.build_features(valid_path, data.max_valid_examples, seed, causes, feat_dir, "valid",
                                    extra=extra, extra_key=extra_key, progress=progress, cm=cm)
    if job.main:
        job.barrier()

    init_from = Path(config.init_from) if config.init_from else None
    if init_from is not None and not resume:
        # Branch off another run (e.g. NEC's contrastive ablations share its NLL stage): its weights,
        # optimiser, RNG and step count; this config's settings (ablation switches) and out_dir.
        if not (init_from / "state.json").is_file():
            raise FileNotFoundError(f"init_from: {init_from}/state.json does not exist (give a run's checkpoint folder)")
        ckpt_in = init_from
    else:
        ckpt_in = ckpt
    if resume or init_from is not None:
        model = recipe.load_model(ckpt_in, backbone, encoder, trainable=True)
        if not resume:
            model.settings = settings
        state = json.loads((ckpt_in / "state.json").read_text())
    else:
        model = _new_model(recipe, config, settings, backbone, encoder)
        state = {"step": optim.start_step, "seconds": 0.0, "examples": 0, "start_step": optim.start_step}
    model.lm.autocast = optim.autocast
    recipe.prepare(model, train_feats, config, out_dir=feat_dir, train_path=train_path)
    params = model.trainable_parameters()
    head_ids = {id(p) for p in model.heads.parameters()}
    groups = [
        {"params": [p for p in params if id(p) not in head_ids], "lr": optim.lr},
        {"params": [p for p in params if id(p) in head_ids], "lr": optim.heads_lr},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=optim.weight_decay)
    rewarm_from = None
    if (resume or init_from is not None) and (ckpt_in / "optimizer.pt").is_file():
        saved = torch.load(ckpt_in / "optimizer.pt", map_location=backbone.device, weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"].cpu())
    elif resume:
        # a checkpoint committed without its optimiser state (it is most of the size): the same data
        # position and schedule, a fresh AdamW that warms up again over warmup_steps
        rewarm_from = int(state["step"])
        log.info("resuming %s without optimizer.pt: a fresh optimiser, warm-up from step %d", ckpt, rewarm_from)
    base_lrs = [g["lr"] for g in groups]
    total_steps = optim.max_steps
    bs = optim.batch_size
    step = int(state["step"])
    first_step = int(state.get("start_step", 0))  # where this run's data order, warm-up and decay began
    start_seconds = float(state["seconds"])
    deadline = time.monotonic() + 60 * optim.max_minutes if optim.max_minutes else None
    t0 = time.monotonic()
    rng_state = None
    model.train(True)
    bar = None
    if progress and job.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, desc=f"train {settings.variant}", unit="step")
    # rank 0 writes the log, the checkpoints and the models; the other processes of a job only train
    log_path = out_dir / "log.jsonl" if job.main else Path(os.devnull)
    step_loss = job.wrap(model)  # model.loss, or the same under DistributedDataParallel
    stopped = "done"
    lengths = [example_length(f) for f in train_feats] if optim.bucket else None
    eval_every = optim.eval_every
    best = {"valid_ppl": state.get("best_valid_ppl"), "step": state.get("best_step")}
    best_dir = out_dir / "best"

    def snapshot() -> Dict[str, Any]:
        return {"step": step, "seconds": round(start_seconds + time.monotonic() - t0, 1), "examples": state["examples"],
                "seed": seed, "total_steps": total_steps, "best_valid_ppl": best["valid_ppl"], "best_step": best["step"],
                **({"start_step": first_step} if first_step else {})}

    def save_best() -> None:
        # stamped like an export, so a run stopped by its time budget leaves a servable, versioned best/
        model.save(best_dir, extra={"training": {**snapshot(), "valid_examples": len(valid_feats),
                                                 "train_examples": len(train_feats)},
                                    "trained_at": _utc_stamp()}, half=True)

    def evaluate_and_keep_best(log_fh) -> None:
        """Validation perplexity now; the best model so far is exported to ``best/`` (fp16)."""
        ppl = validation_ppl(model, valid_feats, bs)
        if ppl is None:
            return
        improved = best["valid_ppl"] is None or ppl < best["valid_ppl"]
        extra = recipe.validation_extra(model, valid_feats)
        log_fh.write(json.dumps({"step": step, "valid_ppl": round(ppl, 4), "best": improved, **extra}) + "\n")
        log_fh.flush()
        if improved:
            best.update(valid_ppl=round(ppl, 4), step=step)
            save_best()
        if bar is not None:
            bar.write(f"step {step}: valid PPL {ppl:.3f}" + (" (best so far)" if improved else f" (best {best['valid_ppl']} at {best['step']})"))

    if resume and job.main and best["step"] is not None and not (best_dir / C.CONFIG_FILE).is_file():
        # a checkpoint carried to another machine (committed without best/): when it is itself the best
        # point, it becomes best/ here, so that the run's export is the best model and not the last step
        if int(best["step"]) == step:
            save_best()
            log.info("best/ rebuilt from the checkpoint (step %d, valid PPL %s)", step, best["valid_ppl"])
        else:
            log.warning("the best model (step %s) is not on this machine; best/ restarts from this run's "
                        "validation points", best["step"])
            best.update(valid_ppl=None, step=None)

    try:
        with log_path.open("a", encoding="utf-8") as log_fh:
            while step < total_steps:
                if job.agree(deadline is not None and time.monotonic() >= deadline):
                    stopped = "time budget reached"
                    break
                factor = _lr_factor(step - first_step, optim.warmup_steps, total_steps - first_step)
                if rewarm_from is not None and optim.warmup_steps:
                    factor *= min(1.0, (step - rewarm_from + 1) / optim.warmup_steps)
                for g, base in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = base * factor
                rng_state = torch.get_rng_state()
                # the global batch (what one process with batch_size × world would draw); this
                # process trains on its share, DistributedDataParallel averages the gradients
                batch = [train_feats[i] for i in _batch_at(step, len(train_feats), bs * job.world, seed, lengths)]
                loss, parts = step_loss(job.share(batch), step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
                optimizer.step()
                step += 1
                state["examples"] += len(batch)
                mean_loss, parts = job.mean_of({"loss": float(loss.detach()), **parts})  # over the job's processes
                record = {"step": step, "loss": round(mean_loss, 4), **{k: round(v, 4) for k, v in parts.items()},
                          "lr": round(optimizer.param_groups[0]["lr"], 7)}
                log_fh.write(json.dumps(record) + "\n")
                log_fh.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", gen=f"{parts.get('gen', 0):.3f}")
                    bar.update(1)
                rng_state = None
                if eval_every and step % eval_every == 0 and job.main:
                    evaluate_and_keep_best(log_fh)
                if step % optim.checkpoint_every == 0 and step < total_steps and job.main:
                    _save_checkpoint(model, optimizer, out_dir, snapshot())
    except KeyboardInterrupt:
        stopped = "interrupted"
        # the interrupted step did not update anything: resume redoes it with the same randomness
        if job.main:
            _save_checkpoint(model, optimizer, out_dir, snapshot(), rng_state)
        if bar is not None:
            bar.close()
        print(f"interrupted at step {step}: checkpoint saved in {ckpt}; continue with --resume", file=sys.stderr)
        raise
    if not job.main:
        job.stop()
        return {**snapshot(), "stopped": stopped, "rank": job.rank}
    if eval_every and step % eval_every:
        # the end of a chunk (time budget) or of the run: the last steps are validated too, so the
        # best model so far is known before the run stops
        with log_path.open("a", encoding="utf-8") as log_fh:
            evaluate_and_keep_best(log_fh)
    if bar is not None:
        bar.close()
    _save_checkpoint(model, optimizer, out_dir, snapshot())
    summary: Dict[str, Any] = {**snapshot(), "stopped": stopped, "processes": job.world}
    if stopped == "done":
        ppl = validation_ppl(model, valid_feats, bs)
        summary.update({
            "valid_ppl": round(ppl, 3) if ppl is not None else None,
            "valid_examples": len(valid_feats),
            "train_examples": len(train_feats),
            "train_data": str(train_path), "valid_data": str(valid_path), "causes": causes,
            "device": backbone.device, "threads": torch.get_num_threads(),
            "trained_at": _utc_stamp(),
            "config": config.model_dump(mode="json"),
        })
        if eval_every and (best_dir / C.CONFIG_FILE).is_file():
            # the served artefact is the best validation checkpoint, not necessarily the last step
            summary.update(valid_ppl_last=summary["valid_ppl"], valid_ppl=best["valid_ppl"], exported_step=best["step"])
            _export_best(best_dir, export_dir, summary)
        else:
            model.save(export_dir, extra={"training": summary, "trained_at": summary["trained_at"]}, half=True)
        summary["export_dir"] = str(export_dir)
        summary["export_mb"] = round(C.folder_megabytes(export_dir), 2)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    job.stop()
    return summary


def run(args: argparse.Namespace) -> int:
    config = TrainSettings.load(args.config, args.generator)
    recipe = recipe_for(args.generator)
    for part in args.ablate:
        if part not in recipe.ABLATIONS:
            raise ValueError(f"--ablate {part}: {args.generator} parts are {', '.join(recipe.ABLATIONS)}")
        config = config.updated(settings={part: False})
        if not args.out_dir:
            config = config.updated(out_dir=f"{config.out_dir or 'runs/' + args.generator}-no-{part}", export_dir=None)
    command_line = {"out_dir": args.out_dir, "init_from": args.init_from, "export_dir": args.export_dir}
    config = config.updated(**{key: value for key, value in command_line.items() if value})
    if args.max_steps:
        config = config.updated(optim={"max_steps": args.max_steps})
    if args.max_minutes:
        config = config.updated(optim={"max_minutes": args.max_minutes})
    if args.export_last:
        summary = export_last(config)
        print(f"{config.generator}: the checkpoint's step {summary['step']}/{summary['total_steps']} exported to "
              f"{summary['export_dir']} ({summary['export_mb']} MB, valid PPL {summary['valid_ppl']})")
        return 0
    summary = train(config, resume=args.resume, progress=not args.quiet)
    if "rank" in summary:
        return 0  # another process of a torchrun job: rank 0 reports
    minutes = summary["seconds"] / 60
    print(f"\n{config.generator}: {summary['step']}/{summary['total_steps']} steps, "
          f"{summary['examples']} examples seen, {minutes:.1f} min ({summary['stopped']})")
    if summary["stopped"] == "done":
        print(f"valid PPL {summary['valid_ppl']} on {summary['valid_examples']} examples; "
              f"model: {summary['export_dir']} ({summary['export_mb']} MB)")
    else:
        print(f"checkpoint: {Path(config.out_dir or 'runs')}/checkpoint — continue with --resume")
    return 0

