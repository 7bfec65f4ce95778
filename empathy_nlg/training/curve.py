"""``empathy-nlg plot-curve``: the training and validation curves of one or more runs, from the
``log.jsonl`` that ``empathy-nlg train`` writes, as one PNG (for model cards) and a printed summary.

    empathy-nlg plot-curve training_runs/nec-ed training_runs/nec-gpu --out empathy_nlg/artifacts/generators/nec/curve.png

A run is its folder (``log.jsonl`` inside, ``summary.json`` beside it when the run has one) or the
log file itself. The x axis counts **training examples**, so runs with different batch sizes (16
on a CPU, 64 on a GPU) compare: the batch is ``examples / step`` of the run's ``summary.json``
(``--batch LABEL=N`` where there is none). A run that continues another (``init_model``) can be
shifted by the examples its parent saw with ``--offset LABEL=N``. Left panel: the training loss
(the ``gen`` NLL where logged, else ``loss``), smoothed over ``--smooth`` steps; right panel: the
validation perplexity with each run's best point marked.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


@dataclass
class Curve:
    """One run's points: ``train`` = (step, loss), ``valid`` = (step, perplexity)."""

    label: str
    batch: int
    offset: int = 0
    train: List[Tuple[int, float]] = field(default_factory=list)
    valid: List[Tuple[int, float]] = field(default_factory=list)

    def examples(self, step: int) -> int:
        return self.offset + step * self.batch

    @property
    def best(self) -> Optional[Tuple[int, float]]:
        return min(self.valid, key=lambda p: p[1]) if self.valid else None


def _log_path(run: Path) -> Path:
    path = run / "log.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path} (give a run folder or its log.jsonl)")
    return path


def _parse_pairs(values: Sequence[str], what: str) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for v in values:
        label, sep, n = v.partition("=")
        if not sep or not label:
            raise ValueError(f"--{what} takes LABEL=N, got {v!r}")
        try:
            out[label] = int(n)
        except ValueError:
            raise ValueError(f"--{what} {v!r}: {n!r} is not a whole number") from None
    return out


def read_curve(run: Path | str, label: Optional[str] = None, batch: Optional[int] = None, offset: int = 0) -> Curve:
    """The points of one run. ``batch`` None: from ``summary.json`` (examples / (step − start_step)),
    else 1."""
    run = Path(run)
    path = _log_path(run)
    folder = path.parent
    label = label or folder.name
    if batch is None:
        summary = folder / "summary.json"
        batch = 1
        if summary.is_file():
            s = json.loads(summary.read_text(encoding="utf-8"))
            # a run that began at start_step (a continuation of the same data order) saw its
            # examples in step - start_step steps; its step numbers already count from the order's start
            steps = int(s.get("step") or 0) - int(s.get("start_step") or 0)
            if steps > 0 and s.get("examples"):
                batch = max(1, round(int(s["examples"]) / steps))
    curve = Curve(label=label, batch=int(batch), offset=int(offset))
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{n}: not a JSON line") from None
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        if "valid_ppl" in rec and rec["valid_ppl"] is not None:
            curve.valid.append((step, float(rec["valid_ppl"])))
        elif "gen" in rec or "loss" in rec:
            curve.train.append((step, float(rec.get("gen", rec.get("loss")))))
    if not curve.train and not curve.valid:
        raise ValueError(f"{path} holds no training or validation points")
    return curve


def _smooth(values: Sequence[float], window: int) -> List[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(curves: Sequence[Curve], out: Path | str, title: str = "", smooth: int = 25) -> Path:
    """Both panels for ``curves`` into the PNG ``out`` (its folder is created)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for c in curves:
        if c.train:
            xs = [c.examples(s) for s, _ in c.train]
            left.plot(xs, _smooth([v for _, v in c.train], max(1, smooth)), label=f"{c.label} (batch {c.batch})", linewidth=1)
        if c.valid:
            line, = right.plot([c.examples(s) for s, _ in c.valid], [v for _, v in c.valid], marker="o", markersize=3,
                               label=c.label)
            step, ppl = c.best
            right.annotate(f"{ppl:.2f}", (c.examples(step), ppl), textcoords="offset points", xytext=(0, -12),
                           ha="center", fontsize=8, color=line.get_color())
    left.set_xlabel("training examples")
    left.set_ylabel(f"training NLL (mean of {smooth} steps)")
    right.set_xlabel("training examples")
    right.set_ylabel("validation perplexity")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def summary_lines(curves: Sequence[Curve]) -> List[str]:
    lines = []
    for c in curves:
        best = c.best
        last = c.train[-1][0] if c.train else (c.valid[-1][0] if c.valid else 0)
        first_v = f"{c.valid[0][1]:.3f} at step {c.valid[0][0]}" if c.valid else "none"
        best_v = f"{best[1]:.3f} at step {best[0]} ({c.examples(best[0]):,} examples)" if best else "none"
        lines.append(f"{c.label}: {last} steps of {c.batch} ({c.examples(last):,} examples); "
                     f"validation PPL first {first_v}, best {best_v}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (with log.jsonl) or log files")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--label", action="append", default=[], help="a label per run, in order (default: folder names)")
    parser.add_argument("--batch", action="append", default=[], metavar="LABEL=N",
                        help="examples per step of a run without summary.json")
    parser.add_argument("--offset", action="append", default=[], metavar="LABEL=N",
                        help="shift a run by the examples its parent run saw")
    parser.add_argument("--smooth", type=int, default=25, help="steps averaged in the training-loss panel (default 25)")
    parser.add_argument("--title", default="", help="figure title")


def run(args: argparse.Namespace) -> int:
    if args.label and len(args.label) != len(args.runs):
        raise ValueError(f"--label given {len(args.label)} times for {len(args.runs)} runs")
    batches = _parse_pairs(args.batch, "batch")
    offsets = _parse_pairs(args.offset, "offset")
    labels = args.label or [None] * len(args.runs)
    curves = []
    for run_path, label in zip(args.runs, labels):
        name = label or _log_path(Path(run_path)).parent.name
        curves.append(read_curve(run_path, name, batches.get(name), offsets.get(name, 0)))
    unknown = (set(batches) | set(offsets)) - {c.label for c in curves}
    if unknown:
        raise ValueError(f"--batch/--offset name runs that are not plotted: {', '.join(sorted(unknown))}")
    out = plot_curves(curves, args.out, args.title, args.smooth)
    for line in summary_lines(curves):
        print(line)
    print(f"wrote {out}")
    return 0
