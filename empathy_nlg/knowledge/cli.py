"""``empathy-nlg knowledge {build,eval,query}``: the commonsense knowledge source's commands.

* ``build [--data-dir DIR]`` — embed the ATOMIC-2020 sample's heads once into the cache
* ``exemplars [--data-dir DIR]`` — index ED train listener replies for exemplar candidates
* ``eval [--data-dir DIR] [--holdout 0.2] [--seed 13] --out DIR`` — held-out retrieval metrics
* ``query --head TEXT [--relations R …] [--source retrieval|comet|none] [--comet-path DIR]``
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from empathy_nlg.taxonomy import IMAGINE_RELATIONS


def _make_encoder(path: Optional[str] = None, device: Optional[str] = None) -> Any:
    """The sentence encoder for retrieval (a seam the tests replace with a tiny fake)."""
    from empathy_nlg.knowledge.retrieval import load_default_encoder

    return load_default_encoder(path, device=device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default=None,
                       help="data root holding atomic2020_sample/ (default: $EMPATHY_NLG_DATA or ../shared/data)")
        p.add_argument("--cache-dir", default=None, help="cache root (default: $EMPATHY_NLG_CACHE or ~/.cache/empathy-nlg)")
        p.add_argument("--encoder", default=None, help="local sentence-encoder folder (default: bundled MiniLM)")
        p.add_argument("--device", default=None, help="cpu / cuda (default: CUDA when present)")

    b = sub.add_parser("build", help="embed the ATOMIC-2020 sample's heads into the cache")
    common(b)
    b.add_argument("--force", action="store_true", help="rebuild even when cached")

    x = sub.add_parser("exemplars", help="index ED train listener replies by the message they answer")
    common(x)
    x.add_argument("--force", action="store_true", help="rebuild even when cached")

    e = sub.add_parser("eval", help="held-out evaluation of retrieval vs a random baseline")
    common(e)
    e.add_argument("--holdout", type=float, default=0.2, help="fraction of distinct heads held out")
    e.add_argument("--seed", type=int, default=13)
    e.add_argument("--k", type=int, default=5, help="tails per (head, relation)")
    e.add_argument("--top-heads", type=int, default=10, help="nearest heads pooled per query")
    e.add_argument("--scoring", choices=["vote", "nearest"], default="vote", help="how pooled tails are ranked")
    e.add_argument("--out", required=True, help="output folder for metrics.json and report.md")
    e.add_argument("--with-examples", action="store_true",
                   help="also write example predictions (dataset text) into metrics.json")

    q = sub.add_parser("query", help="print inferences for one head")
    common(q)
    q.add_argument("--head", required=True, help='an event, e.g. "I failed my driving test"')
    q.add_argument("--relations", nargs="+", default=list(IMAGINE_RELATIONS))
    q.add_argument("--k", type=int, default=5)
    q.add_argument("--source", choices=["retrieval", "comet", "none"], default="retrieval")
    q.add_argument("--comet-path", default=None, help="local COMET-ATOMIC-2020 BART folder (for --source comet)")
    q.add_argument("--top-heads", type=int, default=10)
    q.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        from empathy_nlg.knowledge.retrieval import build_index, knowledge_cache_dir

        index = build_index(args.data_dir, _make_encoder(args.encoder, args.device),
                            cache_root=args.cache_dir, force=args.force, progress=True)
        print(f"ATOMIC index {index.key}: {len(index.heads)} heads, {len(index.rows)} rows, "
              f"{len(index.relations)} relations; cached under {knowledge_cache_dir(args.cache_dir)}")
        return 0

    if args.action == "exemplars":
        from empathy_nlg.knowledge.exemplars import ExemplarIndex, index_dir
        from empathy_nlg.paths import default_data_dir

        data = Path(args.data_dir) if args.data_dir else default_data_dir()
        index = ExemplarIndex.build(data / "empathetic_dialogues" / "train.jsonl", _make_encoder(args.encoder, args.device),
                                    cache_root=args.cache_dir, force=args.force, progress=True)
        print(f"exemplar index {index.key}: {len(index)} listener replies; cached under {index_dir(args.cache_dir)}")
        return 0

    if args.action == "eval":
        from empathy_nlg.knowledge.evaluate import evaluate_retrieval, write_report
        from empathy_nlg.knowledge.retrieval import build_index

        encoder = _make_encoder(args.encoder, args.device)
        index = build_index(args.data_dir, encoder, cache_root=args.cache_dir)
        metrics = evaluate_retrieval(index, encoder, holdout=args.holdout, seed=args.seed, k=args.k,
                                     top_heads=args.top_heads, scoring=args.scoring)
        command = ("empathy-nlg knowledge " + " ".join(shlex.quote(a) for a in sys.argv[2:])
                   if sys.argv[1:2] == ["knowledge"] else None)
        mpath, rpath = write_report(metrics, args.out, command=command, include_examples=args.with_examples)
        c = metrics["counts"]
        print(f"held-out pairs: {c['heldout_pairs_scored']} ({c['heldout_heads']} heads); "
              f"index: {c['index_heads']} heads")
        print(f"{'system':<26} {'top1 B1':>8} {'top1 B2':>8} {'top1 F1':>8} {'topk B1':>8} {'best F1':>8} {'hit@k':>6}")
        for name, m in metrics["systems"].items():
            print(f"{name:<26} {m['top1_bleu1']:8.1f} {m['top1_bleu2']:8.1f} {m['top1_f1']:8.3f} "
                  f"{m['topk_bleu1']:8.1f} {m['bestk_f1']:8.3f} {m['hit_at_k']:6.3f}")
        print(f"wrote {mpath} and {rpath}")
        return 0

    if args.action == "query":
        from empathy_nlg.knowledge.base import load_knowledge_source

        if args.source == "comet":
            if not args.comet_path:
                raise ValueError("--source comet needs --comet-path DIR (a local COMET-ATOMIC-2020 BART folder)")
            config = {"type": "comet", "path": args.comet_path, "device": args.device}
            source = load_knowledge_source(config)
        elif args.source == "retrieval":
            config = {"type": "retrieval", "data_dir": args.data_dir, "cache_dir": args.cache_dir,
                      "top_heads": args.top_heads}
            source = load_knowledge_source(config, encoder=_make_encoder(args.encoder, args.device))
        else:
            source = load_knowledge_source({"type": "none"})
        result = source.infer([args.head], args.relations, k=args.k)[0]
        if args.json:
            print(json.dumps({"head": args.head, "source": source.version, "inferences": result}, indent=2))
        else:
            print(f"{args.head}  [{source.version}]")
            for rel, tails in result.items():
                print(f"  {rel:<12} " + ("; ".join(tails) if tails else "-"))
        return 0
    raise ValueError(f"unknown action {args.action!r}")
