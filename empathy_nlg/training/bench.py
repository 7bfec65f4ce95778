"""``empathy-nlg bench-train``: step time of generator training, one speed-up at a time.

Every row trains the ``finetuned`` generator (plain prompt, LoRA) on the **same batches** of ED
train features and reports the measured seconds per optimiser step (forward + backward + AdamW,
mean of ``--steps`` after one warm-up step) and the padding share of the batch; each row adds one
speed-up to the row above it:

1. ``fp32, LoRA on all layers, full LM head`` — the previous training path;
2. ``+ bf16 autocast`` (skipped, and said so, on a CPU without native bf16: emulated bf16 matmuls
   were measured ~100× slower than fp32 on an AVX2-only EPYC);
3. ``+ LM head on reply positions only``;
4. ``+ LoRA on the top N layers only`` (nothing trainable below: the lower layers run forward only);
5. ``+ length-bucketed batches`` (batches drawn as the trainer draws them with ``bucket: true``).

``--nec`` times NEC's contrastive step instead (``configs/train/nec_ed_epoch.yml``'s settings, the served NEC
as the starting model, its knowledge built for the measured batches; bf16 autocast, bucketed), where
the online y′ negatives and the reply vectors cost more than the NLL forward:

6. ``NEC contrastive step`` — two dropout passes for z_y (golds, then negatives), y′ decoded in fp32;
7. ``+ one dropout-free pass over distinct replies, y′ in bf16, frozen weights cast once``
   (``NecModel.fast_contrastive``, what the trainer runs).

Run it alone on the machine (concurrent jobs are measurement errors).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List

from empathy_nlg.hardware import cpu_has_native_bf16
from empathy_nlg.paths import default_data_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="ED train file (default: the shared data)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="measured steps per row (after one warm-up)")
    parser.add_argument("--top-layers", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--examples", type=int, default=2048, help="examples drawn from ED train")
    parser.add_argument("--nec", action="store_true", help="time NEC's contrastive step instead, before/after its fast path")


def _padding_share(model, batch) -> float:
    from empathy_nlg.datasets import Utterance
    from empathy_nlg.generators import conditioned as C

    prompts = model.prompts([[Utterance(r, t) for r, t in f["context"]] for f in batch])
    replies = [C.encode_reply(model.lm.tokenizer, f["reference"], model.settings.max_reply_tokens, False) for f in batch]
    lengths = [len(p) + len(r) for p, r in zip(prompts, replies)]
    return 1.0 - sum(lengths) / (max(lengths) * len(lengths))


def run(args: argparse.Namespace) -> int:
    import torch

    from empathy_nlg.generators import conditioned as C
    from empathy_nlg.generators.finetuned import FinetunedModel, FinetunedSettings
    from empathy_nlg.training import features as FE
    from empathy_nlg.training.generator import _batch_at, example_length

    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.data or default_data_dir() / "empathetic_dialogues" / "train.jsonl"
    examples = FE.select_examples(path, args.examples, 13)
    feats = [{"context": [[u.role, u.text] for u in ex.context], "reference": ex.reference, "emotion": ex.emotion}
             for ex in examples]
    bs, n = args.batch_size, args.steps + 1
    plain = [[feats[i] for i in _batch_at(s, len(feats), bs, 13)] for s in range(n)]
    lengths = [example_length(f) for f in feats]
    bucketed = [[feats[i] for i in _batch_at(s, len(feats), bs, 13, lengths)] for s in range(n)]
    native = cpu_has_native_bf16()
    if args.nec:
        print(f"bench-train --nec: batch {bs}, {args.steps} measured steps per row, {torch.get_num_threads()} threads")
        nec = _nec_rows(feats, lengths, args, native, Path(path))
        print(f"summary (NEC): {nec[0]:.2f} → {nec[1]:.2f} s per step of {bs} (×{nec[0] / nec[1]:.2f}); one epoch of "
              f"40,252 examples ≈ {40252 / bs * nec[1] / 3600:.1f} h")
        return 0
    lora_all = {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    rows = [
        ("fp32, LoRA on all layers, full LM head", dict(autocast=None, head=False, top=None, batches=plain)),
        ("+ bf16 autocast", dict(autocast="bf16", head=False, top=None, batches=plain)),
        ("+ LM head on reply positions only", dict(autocast="bf16", head=True, top=None, batches=plain)),
        (f"+ LoRA on the top {args.top_layers} layers only", dict(autocast="bf16", head=True, top=args.top_layers, batches=plain)),
        ("+ length-bucketed batches", dict(autocast="bf16", head=True, top=args.top_layers, batches=bucketed)),
    ]
    print(f"bench-train: batch {bs}, {args.steps} measured steps per row, {torch.get_num_threads()} threads, "
          f"{len(feats)} ED train examples")
    results: List[Dict[str, Any]] = []
    for label, cfg in rows:
        if cfg["autocast"] == "bf16" and not native:
            # emulated bf16 (no AVX-512 BF16/AMX): ~100× slower than fp32; the trainer's "auto" keeps it off
            cfg["autocast"] = None
            label = label.replace("+ bf16 autocast", "bf16 autocast skipped: this CPU has no native bf16 (rows stay fp32)")
        backbone = C.load_base(None, device=None, dtype="float32")
        model = FinetunedModel(FinetunedSettings(), backbone, lora={**lora_all, "top_layers": cfg["top"]})
        model.lm.autocast = cfg["autocast"]
        model.lm.reply_head_only = cfg["head"]
        model.train(True)
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
        times = []
        for i, batch in enumerate(cfg["batches"]):
            t0 = time.perf_counter()
            loss, _ = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i:  # the first step warms up
                times.append(time.perf_counter() - t0)
        pad = statistics.mean(_padding_share(model, b) for b in cfg["batches"])
        mean = statistics.mean(times)
        results.append({"row": label, "seconds": mean, "padding": pad})
        base = results[0]["seconds"]
        print(f"  {label:<45} {mean:6.2f} s/step  (×{base / mean:4.2f} vs row 1)  padding {100 * pad:4.1f} %", flush=True)
        del model, backbone, opt
    last = results[-1]["seconds"]
    print(f"summary: {results[0]['seconds']:.2f} → {last:.2f} s per step of {bs}; one epoch of 40,252 examples ≈ "
          f"{40252 / bs * last / 3600:.1f} h at the last row")
    return 0


def _nec_rows(feats, lengths, args, native: bool, train_path: Path) -> List[float]:
    """Seconds per NEC contrastive step, before and after its fast path, on the same batches."""
    import tempfile

    import torch

    from empathy_nlg.generators import conditioned as C
    from empathy_nlg.generators.nec import RECIPE
    from empathy_nlg.paths import PACKAGE_DIR
    from empathy_nlg.perception.encoder import SentenceEncoder
    from empathy_nlg.settings import TrainSettings
    from empathy_nlg.training.generator import _batch_at

    served = PACKAGE_DIR / "artifacts" / "generators" / "nec"
    config = TrainSettings.load(PACKAGE_DIR.parent / "configs" / "train" / "nec_ed_epoch.yml", "nec")
    settings = RECIPE.settings_from(config.settings)
    bs, n = args.batch_size, args.steps + 1
    batches = [[dict(feats[i]) for i in _batch_at(s, len(feats), bs, 13, lengths)] for s in range(n)]
    backbone = C.load_base(None, device=None, dtype="float32")
    encoder = SentenceEncoder(device=backbone.device)
    with tempfile.TemporaryDirectory() as tmp:
        # the served model's fact scorer ranks the facts (feature_extra copies it from init_model)
        add, _ = RECIPE.feature_extra(settings, config.updated(init_model=str(served), out_dir=tmp), encoder, Path(tmp))
        flat = [f for b in batches for f in b]
        for f in flat:  # what the feature builder gives every example
            f.update(cause_indices=[len(f["context"]) - 1], cm=None)
        if add is not None:
            add(flat, False)
        model = RECIPE.load_model(served, backbone, encoder, trainable=True)
        model.lm.autocast = "bf16" if native else None
        RECIPE.prepare(model, flat, config, out_dir=Path(tmp), train_path=train_path)
    model.train(True)
    out = []
    for label, fast in (("NEC contrastive step", False),
                        ("+ one dropout-free pass over distinct replies, y′ in bf16, frozen weights cast once", True)):
        model.fast_contrastive = fast
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
        times = []
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            loss, _ = model.loss(batch, step=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
        out.append(statistics.mean(times))
        print(f"  {label:<45} {out[-1]:6.2f} s/step  (×{out[0] / out[-1]:4.2f} vs the NEC row)", flush=True)
    return out
