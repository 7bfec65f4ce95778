"""``empathy-nlg bench-generate``: reply latency of generators on CPU (or the GPU when present).

Loads each generator the way the engine does (``--config``: a file with ``generators: {NAME: …}``,
default the engine's settings), perceives ``--n`` held-out ED contexts once (perception time is
reported separately: ``bench-perceive``), warms up, then times one ``generate`` call per context
(batch of one, as in a live conversation: knowledge look-up, conditioning, decoding and — for
NEC — reranking included) and prints p50 / p95 / mean seconds per reply. ``--batch N`` times one
call per N contexts instead (batched decoding, as a GPU server would run it: seconds per call and
replies per second); ``--no-perception`` sends requests without perception, for a host that only
generates (the perceiver's encoders need not be there).

``--speedups`` times each trained generator once per serving speed-up, cumulatively, in one run
on the same contexts, and prints each step's ratio against the first (the backbone with its
adapters, decoded by plain ``transformers.generate``, which runs the prompt once per beam) and how
many replies stayed the same:

1. ``plain``: adapters separate, the prompt run once per beam;
2. ``+ shared prefill``: the prompt run once per reply, its key/value cache repeated for the beams;
3. ``+ merged adapters``: the LoRA weights merged into the backbone, fp32;
4. ``+ bfloat16 weights``: the merged weights cast to bf16 (``serve_dtype: auto`` on a CPU that
   multiplies bf16 natively — the served configuration there; skipped elsewhere).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", action="append", required=True, metavar="NAME",
                        help="generator name or a --config label; repeat for several")
    parser.add_argument("--data", default=None, help="ED jsonl with held-out conversations (default: ED valid)")
    parser.add_argument("--n", type=int, default=20, help="timed replies per generator (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed replies first (default 2)")
    parser.add_argument("--config", default=None, help="YAML with generators: {NAME: {...}} (as for evaluate)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--batch", type=int, default=1, metavar="N",
                        help="contexts per generate call (default 1, a live conversation); >1 measures batched "
                        "decoding: p50/p95 per call and replies per second")
    parser.add_argument("--no-perception", action="store_true",
                        help="requests without perception (a generation-only host; generators fall back to their own "
                        "emotion/cause inference); default: the perceiver perceives each context once, untimed")
    parser.add_argument("--speedups", action="store_true",
                        help="trained generators: time plain generate, + shared prefill, + merged adapters, + bf16 weights (ratios)")


def run(args: argparse.Namespace) -> int:
    import torch

    from empathy_nlg.evaluation.harness import _load_config, build_generators, load_examples, load_perceiver
    from empathy_nlg.generators.base import GenerationRequest
    from empathy_nlg.paths import default_data_dir

    if args.n <= 0:
        raise ValueError("--n must be positive")
    if args.batch <= 0:
        raise ValueError("--batch must be positive")
    if args.speedups and args.batch != 1:
        raise ValueError("--speedups times a batch of one; leave --batch out")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else default_data_dir() / "empathetic_dialogues" / "valid.jsonl"
    examples = load_examples(data, "ed-jsonl", args.n + args.warmup)
    config = _load_config(args.config)
    perceiver = None if args.no_perception else load_perceiver(config)
    perceptions = perceiver.perceive_batch([ex.context for ex in examples]) if perceiver else [None] * len(examples)
    requests = [GenerationRequest(context=list(ex.context), perception=p) for ex, p in zip(examples, perceptions)]
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    results: Dict[str, Any] = {"device": device, "n": args.n, "batch": args.batch, "data": str(data),
                               "perception": perceiver is not None}
    print(f"reply latency, batch of {args.batch}, {args.n} held-out contexts of {data.name}, on {device}"
          + ("" if perceiver is not None else ", without perception"))
    if args.speedups:
        results["speedups"] = {name: _speedup_ladder(name, config, requests, args) for name in args.generator}
    else:
        for name, gen in build_generators(args.generator, config).items():
            row, _ = _time(name, gen, requests, args)
            results[name] = row
            print(f"\r  {name:24s} p50 {row['p50_s']:.3f} s   p95 {row['p95_s']:.3f} s   mean {row['mean_s']:.3f} s"
                  f"   per call of {args.batch}; {row['replies_per_s']} replies/s   ({row['mean_words']} words/reply)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"written to {args.json}")
    return 0


def _time(label: str, gen, requests, args) -> tuple:
    """Warm-up, then one timed ``generate`` per ``--batch`` contexts: (figures, reply texts)."""
    size = getattr(args, "batch", 1)
    for start in range(0, args.warmup, size):
        gen.generate(requests[start : min(start + size, args.warmup)])
    timed = requests[args.warmup :]
    times: List[float] = []
    texts: List[str] = []
    for start in range(0, len(timed), size):
        part = timed[start : start + size]
        t0 = time.perf_counter()
        out = gen.generate(part)
        times.append(time.perf_counter() - t0)
        texts.extend(o.text for o in out)
        print(f"\r  {label}: {len(texts)}/{args.n}", end="", flush=True)
    arr = np.asarray(times)
    row = {"p50_s": round(float(np.percentile(arr, 50)), 3), "p95_s": round(float(np.percentile(arr, 95)), 3),
           "mean_s": round(float(arr.mean()), 3), "calls": len(times),
           "replies_per_s": round(len(texts) / float(arr.sum()), 2) if arr.sum() > 0 else None,
           "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1), "version": gen.version}
    return row, texts


def _speedup_ladder(name: str, config, requests, args) -> Dict[str, Any]:
    """The serving speed-ups of one trained generator, cumulatively, on the same contexts."""
    from empathy_nlg.evaluation.harness import build_generators
    from empathy_nlg.generators.trained import TrainedGenerator

    section = dict((config.get("generators") or {}).get(name) or {})

    def built(**options: Any):
        sections = {**(config.get("generators") or {}), name: {**section, **options}}
        return build_generators([name], {**config, "generators": sections})[name]

    unmerged = built(merge_adapters=False, serve_dtype="float32")
    if not isinstance(unmerged, TrainedGenerator):
        raise ValueError(f"--speedups: {name!r} is not a trained generator")
    steps: Dict[str, Any] = {}
    print(f"{name}: serving speed-ups, cumulative; ratio = p50 against 'plain'")
    unmerged.model.lm.shared_prefill = False
    steps["plain"], base = _time(name, unmerged, requests, args)
    unmerged.model.lm.shared_prefill = True
    steps["+ shared prefill"], shared = _time(name, unmerged, requests, args)
    del unmerged
    merged = built(serve_dtype="float32")
    steps["+ merged adapters"], fp32 = _time(name, merged, requests, args)
    del merged
    runs = [base, shared, fp32]
    served = built()  # as configured: serve_dtype auto → bf16 weights where the CPU multiplies bf16 natively
    if served.serve_dtype != "float32":
        steps[f"+ {served.serve_dtype} weights"], cast = _time(name, served, requests, args)
        runs.append(cast)
    else:
        print("  (no bf16 step: serve_dtype resolves to float32 on this machine — no native bf16)")
    for (label, row), texts in zip(steps.items(), runs):
        row["ratio_p50"] = round(steps["plain"]["p50_s"] / row["p50_s"], 2)
        row["same_replies"] = f"{sum(a == b for a, b in zip(base, texts))}/{len(base)}"
        print(f"\r  {label:20s} p50 {row['p50_s']:.2f} s   p95 {row['p95_s']:.2f} s   ×{row['ratio_p50']:.2f}"
              f"   same replies as plain {row['same_replies']}")
    return steps
