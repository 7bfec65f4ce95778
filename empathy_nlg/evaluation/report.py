"""``DIR/report.md`` and its PNG plots (matplotlib, Agg backend) for an evaluation run."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from empathy_nlg.evaluation import metrics as M
from empathy_nlg.evaluation.published import PUBLISHED_ROWS, PublishedRow

# (column title, metrics.json key)
COLUMNS = [
    ("n", "n"), ("BLEU-1", "bleu1"), ("BLEU-2", "bleu2"), ("BLEU-3", "bleu3"), ("BLEU-4", "bleu4"),
    ("Dist-1", "dist1"), ("Dist-2", "dist2"), ("Sent-Std ↓", "sent_std"), ("Top-5 % ↓", "top5_share"),
    ("Emo acc", "emotion_acc"), ("PPL ↓", "ppl"), ("ER %", "epitome_er"), ("IP %", "epitome_ip"),
    ("EX %", "epitome_ex"), ("Len", "avg_len"), ("sec", "seconds"),
]
BAR_METRICS = ["bleu1", "bleu2", "bleu4", "dist1", "dist2", "top5_share", "emotion_acc", "epitome_er", "epitome_ip", "epitome_ex"]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _row(label: str, values: Mapping[str, Any]) -> str:
    return "| " + label + " | " + " | ".join(_fmt(values.get(k)) for _, k in COLUMNS) + " |"


def reference_metrics(records: Sequence[Mapping[str, Any]], any_metrics: Mapping[str, Any]) -> Dict[str, Any]:
    """The human references scored like a system (no BLEU/PPL/emotion): our own "human" row."""
    refs = [r.get("reference") or "" for r in records]
    vals: Dict[str, Any] = {"n": len(refs)}
    if refs:
        m = M.reply_metrics(refs, refs)
        vals.update({k: m[k] for k in ("dist1", "dist2", "sent_std", "top5_share", "avg_len")})
    for c in ("er", "ip", "ex"):
        vals[f"epitome_{c}"] = any_metrics.get(f"ref_epitome_{c}")
    return vals


def results_table(
    metrics_by_gen: Mapping[str, Mapping[str, Any]],
    published: Sequence[PublishedRow] = PUBLISHED_ROWS,
    references: Mapping[str, Any] | None = None,
) -> str:
    head = "| system | " + " | ".join(t for t, _ in COLUMNS) + " |"
    sep = "|---|" + "|".join("---:" for _ in COLUMNS) + "|"
    lines = [head, sep]
    for name, m in metrics_by_gen.items():
        lines.append(_row(f"**{name}** (this run)", m))
    if references:
        lines.append(_row("human references (this run)", references))
    for row in published:
        lines.append(_row(f"{row.system} — *published*", row.metrics))
    return "\n".join(lines)


def _plots(out: Path, metrics_by_gen: Mapping[str, Mapping[str, Any]], records_by_gen: Mapping[str, Sequence[Mapping[str, Any]]]) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: List[str] = []
    names = list(metrics_by_gen)
    if not names:
        return files
    # 1. metric bars, one group per metric, one bar per generator (published NEC where known)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(BAR_METRICS) * max(1, len(names))), 4.5), dpi=100)
    width = 0.8 / (len(names) + 1)
    xs = range(len(BAR_METRICS))
    for i, name in enumerate(names):
        vals = [metrics_by_gen[name].get(k) or 0.0 for k in BAR_METRICS]
        ax.bar([x + i * width for x in xs], vals, width=width, label=name)
    nec = next((r for r in PUBLISHED_ROWS if r.system == "NEC"), None)
    if nec is not None:
        vals = [nec.metrics.get(k, 0.0) for k in BAR_METRICS]
        ax.bar([x + len(names) * width for x in xs], vals, width=width, label="NEC (published, ED test)", hatch="//", alpha=0.5)
    ax.set_xticks([x + width * len(names) / 2 for x in xs])
    ax.set_xticklabels(BAR_METRICS, rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.set_title("Metrics (%) per generator")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metrics.png")
    plt.close(fig)
    files.append("metrics.png")

    # 2. reply-length histogram (tokens), references included
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    first = next(iter(records_by_gen.values()), [])
    lengths = {name: [len(M.tokenize(r.get("reply") or "")) for r in recs] for name, recs in records_by_gen.items()}
    lengths["references"] = [len(M.tokenize(r.get("reference") or "")) for r in first]
    top = max([max(v) for v in lengths.values() if v] + [1])
    bins = range(0, min(top, 80) + 2)
    for name, ls in lengths.items():
        if ls:
            ax.hist([min(x, 80) for x in ls], bins=bins, alpha=0.5, label=name, histtype="stepfilled")
    ax.set_xlabel("reply length (tokens, capped at 80)")
    ax.set_ylabel("replies")
    ax.set_title("Reply-length histogram")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reply_length_hist.png")
    plt.close(fig)
    files.append("reply_length_hist.png")
    return files


def write_report(
    out_dir: str | Path,
    metrics_by_gen: Mapping[str, Mapping[str, Any]],
    records_by_gen: Mapping[str, Sequence[Mapping[str, Any]]],
    meta: Mapping[str, Any],
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(out, metrics_by_gen, records_by_gen)
    n = next((m.get("n") for m in metrics_by_gen.values()), 0)
    first_records = next(iter(records_by_gen.values()), [])
    first_metrics = next(iter(metrics_by_gen.values()), {})
    refs_row = reference_metrics(first_records, first_metrics) if first_records else None
    lines: List[str] = [
        "# Response-generation evaluation",
        "",
        f"- data: `{meta.get('path', '?')}` ({meta.get('format', '?')}), {n} examples"
        + (f" (first {meta['limit']})" if meta.get("limit") else "")
        + f"; seed {meta.get('seed', '?')}; batch size {meta.get('batch_size', '?')}",
        f"- perceiver: {meta.get('perceiver') or 'none'}"
        + (f" ({meta['perception_seconds']:.1f} s perceiving, shared)" if meta.get("perception_seconds") else "")
        + f"; EPITOME scorer: {meta.get('cm_scorer') or 'none'}"
        + (f"; training replies (fit): `{meta['train_data']}`" if meta.get("train_data") else ""),
        f"- written {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        "## Results",
        "",
        "Rows marked **(this run)** are measured here; rows marked *published* are copied from the",
        "papers (ED **test** split, the papers' own metric implementations — see the notes below) and",
        "are orientation, not a like-for-like comparison. Empty cells: not reported / not found.",
        "All numbers in % except n, Sent-Std, PPL, Len (tokens) and sec. The *human references* row scores",
        "the reference replies of the same examples like a system (diversity, length, EPITOME).",
        "",
        results_table(metrics_by_gen, references=refs_row),
        "",
    ]
    split = {f"{name} · {group} contexts": sub for name, m in metrics_by_gen.items()
             for group, sub in (m.get("by_polarity") or {}).items() if sub.get("n")}
    if split:
        lines += [
            "### By the context's polarity (MIME's Table 4 split)",
            "",
            "The same metrics on the examples whose conversation's gold ED emotion is in MIME's positive",
            "group (13 emotions) and on those in its negative group (19); `sec` is not split.",
            "",
            results_table(split, published=()),
            "",
        ]
    for name, m in metrics_by_gen.items():
        extra = []
        if m.get("ppl_tokenizer"):
            extra.append(f"PPL tokenizer: {m['ppl_tokenizer']}")
        extra.append(f"{m.get('generated_predictions', '?')} generated / {m.get('reused_predictions', '?')} reused predictions")
        lines.append(f"- {name}: " + "; ".join(extra))
    lines += ["", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", "## Metric definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in M.DEFINITIONS.items()]
    lines += ["", "## Published rows: sources and gaps", ""]
    for row in PUBLISHED_ROWS:
        lines.append(f"- **{row.system}** — {row.paper}; {row.table}. Source: {row.source}.")
        if row.notes:
            lines.append(f"  Note: {row.notes}")
        if row.missing:
            lines.append(f"  Not found (left empty): {', '.join(row.missing)}.")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
