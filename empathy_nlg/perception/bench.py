"""``empathy-nlg bench-perceive``: latency of :meth:`Perceiver.perceive` on a CPU-sized context.

Loads the committed perception models, warms up, then times ``--n`` calls on a ``--turns``-turn
dialogue (ending with the user's turn; the text is our own and the last turn differs per call, as
a new user message would) and prints p50 / p95 / mean in milliseconds. By default the earlier
turns hit the Perceiver's utterance cache (the live-conversation case); ``--cold`` re-encodes
every turn. Target: p95 ≤ 50 ms on CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import List

import numpy as np

from empathy_nlg.datasets import Utterance

_SPEAKER = (
    "I finally got the results of my exam back this morning and I failed it by two points.",
    "I studied every evening for a month, so it feels really unfair.",
    "My parents keep asking about it and I don't know what to tell them.",
    "I guess I can retake it in the spring, but I'm worried it will happen again.",
)
_LISTENER = (
    "Oh no, that sounds so frustrating after all that work.",
    "Do you know which part of the exam went wrong?",
    "That's a lot of pressure to carry on top of the disappointment.",
)


def make_dialogue(turns: int, variant: int) -> List[Utterance]:
    """A ``turns``-long dialogue alternating user/assistant and ending with the user."""
    roles = ["speaker" if (turns - 1 - i) % 2 == 0 else "listener" for i in range(turns)]
    out, s, l = [], 0, 0
    for role in roles:
        if role == "speaker":
            text = _SPEAKER[s % len(_SPEAKER)]
            s += 1
        else:
            text = _LISTENER[l % len(_LISTENER)]
            l += 1
        out.append(Utterance(role, text))
    last = out[-1]
    out[-1] = Utterance(last.role, f"{last.text} (take {variant})")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=200, help="timed calls")
    parser.add_argument("--turns", type=int, default=5, help="utterances per dialogue")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cold", action="store_true",
                        help="clear the Perceiver's utterance cache before every call (all turns re-encoded); "
                             "default: only the new last turn is unseen, as in a live conversation")
    parser.add_argument("--crisis-encoder", default=None,
                        help="the crisis classifier's larger encoder (default: perception.crisis_encoder of the engine's "
                             "default settings, as served; 'none': the MiniLM crisis head alone)")
    parser.add_argument("--crisis-dtype", choices=("auto", "float32", "bfloat16"), default=None,
                        help="the larger encoder's weights (default: perception.crisis_encoder_dtype of the engine's "
                             "default settings, as served)")
    parser.add_argument("--open-gate", action="store_true",
                        help="run the larger crisis encoder on every call (its gate held open): the worst case, as for a "
                             "message that sounds like danger; default: the gate decides, as served")
    parser.add_argument("--emotion-tuned-weight", type=float, default=None,
                        help="blend the fine-tuned emotion model in with this weight (default: "
                             "perception.emotion_tuned_weight of the engine's default settings, as served; 0: off)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")


def run(args: argparse.Namespace) -> int:
    import torch

    from empathy_nlg.perception.perceiver import Perceiver

    if args.n < 1 or args.turns < 1:
        raise ValueError("--n and --turns must be positive")
    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    from empathy_nlg.perception.crisis_train import default_crisis_dtype, default_crisis_encoder
    from empathy_nlg.perception.emotion_tuned import default_weight

    crisis_encoder = args.crisis_encoder if args.crisis_encoder is not None else default_crisis_encoder()
    weight = args.emotion_tuned_weight if args.emotion_tuned_weight is not None else default_weight()
    perceiver = Perceiver.load(args.artifacts, device=args.device, crisis_encoder=crisis_encoder,
                               crisis_dtype=args.crisis_dtype or default_crisis_dtype(), emotion_tuned_weight=weight)
    if args.open_gate:
        perceiver.crisis.gate = float("-inf")
    load_s = time.perf_counter() - t0
    for k in range(args.warmup):
        perceiver.perceive(make_dialogue(args.turns, -k - 1))
    times = []
    perceiver.crisis.gate_stats.update(large=0, gated_out=0)
    for k in range(args.n):
        dlg = make_dialogue(args.turns, k)
        if args.cold:
            perceiver._cache.clear()
        t = time.perf_counter()
        perceiver.perceive(dlg)
        times.append((time.perf_counter() - t) * 1000)
    arr = np.asarray(times)
    result = {
        "device": perceiver.encoder.device, "threads": torch.get_num_threads(), "turns": args.turns, "n": args.n,
        "mode": "cold" if args.cold else "warm-cache",
        "load_s": round(load_s, 2), "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2), "mean_ms": round(float(arr.mean()), 2),
        "crisis": perceiver.crisis.version, "crisis_large_runs": perceiver.crisis.gate_stats["large"],
        "crisis_encoder": perceiver.crisis.large.name if perceiver.crisis.large is not None else None,
        "emotion": perceiver.versions["emotion"],
    }
    print(f"perceive latency ({result['mode']}), {args.turns}-turn context, {args.n} calls on {result['device']} "
          f"({result['threads']} threads), load {result['load_s']} s")
    print(f"p50 {result['p50_ms']} ms | p95 {result['p95_ms']} ms | mean {result['mean_ms']} ms")
    print(f"emotion {result['emotion']}")
    print(f"crisis detector {result['crisis']}: the larger encoder ({result['crisis_encoder']}) ran in "
          f"{result['crisis_large_runs']} of {args.n} calls")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
