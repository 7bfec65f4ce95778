"""``empathy-nlg prepare``: convert and cache the default backbone once (idempotent)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", type=Path, default=None, help="output folder (default: the cache)")
    parser.add_argument("--force", action="store_true", help="convert again even if a conversion exists")


def run(args: argparse.Namespace) -> int:
    from empathy_nlg.backbone.loader import default_backbone_dir, is_prepared, prepare_default_backbone

    target = args.target or default_backbone_dir()
    if is_prepared(target) and not args.force:
        print(f"backbone ready: {target} (cached)")
        return 0
    print(f"converting the packaged SmolLM2-135M-Instruct GGUF into {target} (once, ≈ 30 s) …", flush=True)
    start = time.perf_counter()
    path = prepare_default_backbone(target, force=args.force)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20
    print(f"backbone ready: {path} ({size:.0f} MiB, {time.perf_counter() - start:.1f} s)")
    return 0
