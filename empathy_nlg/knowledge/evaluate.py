"""Held-out evaluation of the retrieval knowledge source on the ATOMIC-2020 sample.

Protocol (``empathy-nlg knowledge eval``):

1. the sample's distinct heads are split, seeded, into an *index* part and a *held-out* part
   (``--holdout`` of the heads); all rows of a head go to the same side, so no held-out head is
   ever retrievable;
2. for every held-out ``(head, relation)`` row with at least one non-``none`` gold tail, each
   system proposes up to ``k`` tails using the index part only;
3. predictions are scored against the gold tails as a multi-reference set: sentence BLEU-1 and
   BLEU-2 (sacrebleu, lower-cased, effective order, exp smoothing; clipped counts against all
   references, as COMET-ATOMIC-2020's evaluation does), and token F1 (best gold tail). "top-1"
   scores the first prediction, "top-k" averages over all ``k`` predictions (the COMET papers'
   habit), ``best-of-k F1`` takes the best of the ``k`` and ``hit@k`` counts exact matches.

Systems: ``retrieval`` (the default source: gold tails + COMET-BART generations of the nearest
heads), ``retrieval-no-entity-floor`` (ablation: entity relations answered even when no entity
head is similar), ``retrieval-gold-only`` (ablation: no generations), ``random-same-relation`` (``k`` random index tails of
the same relation — the floor that makes the numbers mean something), ``frequent-same-relation``
(the ``k`` most frequent index gold tails of the relation, whatever the head — shows how much comes
from the head at all), and ``comet-bart`` (the
sample's own COMET-BART beams for the held-out rows — the generative model the retrieval stands in
for; it was trained on ATOMIC-2020's train split, these are test heads). Gold tails and all
predictions pass through the same first-person rewriting and cleaning.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from empathy_nlg.knowledge.atomic import AtomicRow, atomic_tail_to_user, atomic_to_user, is_none_tail, normalise_key
from empathy_nlg.knowledge.base import clean_tails
from empathy_nlg.knowledge.retrieval import AtomicIndex, RetrievalKnowledgeSource
from empathy_nlg.text import token_f1, words  # noqa: F401  (token_f1: used by the report and its tests)

log = logging.getLogger(__name__)

# token F1 and word tokens: the project's one definition (empathy_nlg.text)
tokens = words


class _Bleu:
    """Sentence BLEU-n against a reference set (sacrebleu), on a 0–100 scale."""

    def __init__(self) -> None:
        from sacrebleu.metrics import BLEU

        self._m = {n: BLEU(max_ngram_order=n, effective_order=True, lowercase=True) for n in (1, 2)}

    def __call__(self, n: int, hypothesis: str, references: Sequence[str]) -> float:
        return float(self._m[n].sentence_score(hypothesis, list(references)).score)


def split_heads(n_heads: int, holdout: float, seed: int) -> Tuple[List[int], List[int]]:
    """Seeded split of head ids into (index part, held-out part)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"--holdout must be between 0 and 1, got {holdout}")
    ids = list(range(n_heads))
    random.Random(seed).shuffle(ids)
    n_out = max(1, int(round(n_heads * holdout)))
    if n_out >= n_heads:
        raise ValueError("the held-out part would leave no heads to retrieve from")
    return sorted(ids[n_out:]), sorted(ids[:n_out])


def score_predictions(preds: Sequence[str], refs: Sequence[str], bleu: _Bleu) -> Dict[str, float]:
    """Per-pair scores (zeros when there is no prediction)."""
    if not preds:
        return {"top1_bleu1": 0.0, "top1_bleu2": 0.0, "top1_f1": 0.0, "topk_bleu1": 0.0,
                "topk_bleu2": 0.0, "topk_f1": 0.0, "bestk_f1": 0.0, "hit_at_k": 0.0, "answered": 0.0}
    b1 = [bleu(1, p, refs) for p in preds]
    b2 = [bleu(2, p, refs) for p in preds]
    f1 = [token_f1(p, refs) for p in preds]
    gold = {" ".join(tokens(r)) for r in refs}
    return {
        "top1_bleu1": b1[0], "top1_bleu2": b2[0], "top1_f1": f1[0],
        "topk_bleu1": sum(b1) / len(b1), "topk_bleu2": sum(b2) / len(b2), "topk_f1": sum(f1) / len(f1),
        "bestk_f1": max(f1), "hit_at_k": float(any(" ".join(tokens(p)) in gold for p in preds)),
        "answered": 1.0,
    }


def _mean(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    if not rows:
        return {}
    return {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in rows[0]}


def evaluate_retrieval(
    index: AtomicIndex,
    encoder: Any,
    holdout: float = 0.2,
    seed: int = 13,
    k: int = 5,
    top_heads: int = 10,
    generation_penalty: float = 0.05,
    scoring: str = "vote",
    relation_min_similarity: Optional[Dict[str, float]] = None,
) -> Dict[str, Any]:
    """Run the protocol in the module docstring; returns the metrics dictionary."""
    started = time.time()
    index_ids, held_ids = split_heads(len(index.heads), holdout, seed)
    idx_part = index.subset(index_ids, tag="eval")
    held_set = set(held_ids)
    held_rows: List[AtomicRow] = []
    skipped_none = 0
    for row, h in zip(index.rows, index.row_head):
        if h in held_set:
            if all(is_none_tail(t) for t in row.tails):
                skipped_none += 1
            else:
                held_rows.append(row)
    refs = [clean_tails([atomic_tail_to_user(t) for t in row.tails], 100) for row in held_rows]

    systems: Dict[str, List[List[str]]] = {}
    variants = (
        ("retrieval", True, relation_min_similarity),
        ("retrieval-no-entity-floor", True, {}),
        ("retrieval-gold-only", False, relation_min_similarity),
    )
    for name, use_gen, floors in variants:
        source = RetrievalKnowledgeSource(idx_part, encoder, top_heads=top_heads, use_generations=use_gen,
                                          generation_penalty=generation_penalty, scoring=scoring,
                                          relation_min_similarity=floors)
        by_rel: Dict[str, List[int]] = defaultdict(list)
        for i, row in enumerate(held_rows):
            by_rel[row.relation].append(i)
        preds: List[List[str]] = [[] for _ in held_rows]
        for rel, ids in by_rel.items():
            answers = source.infer([held_rows[i].head for i in ids], [rel], k=k)
            for i, ans in zip(ids, answers):
                preds[i] = ans[rel]
        systems[name] = preds

    rng = random.Random(seed)
    pool: Dict[str, List[str]] = defaultdict(list)
    for row in idx_part.rows:
        pool[row.relation].extend(atomic_tail_to_user(t) for t in row.tails if not is_none_tail(t))
    systems["random-same-relation"] = [
        clean_tails(rng.sample(pool[row.relation], min(len(pool[row.relation]), 4 * k)), k)
        if pool.get(row.relation) else []
        for row in held_rows
    ]
    frequent: Dict[str, List[str]] = {}
    for rel, tails in pool.items():
        counts = Counter(normalise_key(t) for t in tails)
        first = {}
        for t in tails:
            first.setdefault(normalise_key(t), t)
        frequent[rel] = [first[key] for key, _ in counts.most_common(4 * k)]
    systems["frequent-same-relation"] = [clean_tails(frequent.get(row.relation, []), k) for row in held_rows]
    if any(row.generations for row in held_rows):
        systems["comet-bart"] = [clean_tails([atomic_tail_to_user(t) for t in row.generations], k) for row in held_rows]

    bleu = _Bleu()
    results: Dict[str, Any] = {}
    per_relation: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, preds in systems.items():
        scores = [score_predictions(p, r, bleu) for p, r in zip(preds, refs)]
        results[name] = _mean(scores)
        grouped: Dict[str, List[Dict[str, float]]] = defaultdict(list)
        for row, s in zip(held_rows, scores):
            grouped[row.relation].append(s)
        per_relation[name] = {
            rel: {"n": len(v), "top1_bleu1": _mean(v)["top1_bleu1"], "top1_f1": _mean(v)["top1_f1"]}
            for rel, v in sorted(grouped.items())
        }
    examples = [
        {"head": atomic_to_user(row.head), "relation": row.relation, "gold": r[:3],
         "retrieval": systems["retrieval"][i][:3], "random": systems["random-same-relation"][i][:2]}
        for i, (row, r) in enumerate(zip(held_rows[:8], refs[:8]))
    ]
    return {
        "protocol": {
            "holdout": holdout, "seed": seed, "k": k, "top_heads": top_heads,
            "generation_penalty": generation_penalty, "scoring": scoring, "split": "by distinct head",
            "bleu": "sacrebleu sentence BLEU, lowercase, effective order, exp smoothing, multi-reference, 0-100",
            "f1": "token F1 against the best gold tail, 0-1",
        },
        "counts": {
            "heads": len(index.heads), "index_heads": len(index_ids), "heldout_heads": len(held_ids),
            "index_rows": len(idx_part.rows), "heldout_pairs_scored": len(held_rows),
            "heldout_pairs_all_none_skipped": skipped_none,
        },
        "systems": results,
        "per_relation": per_relation,
        "examples": examples,
        "seconds": round(time.time() - started, 1),
    }


def write_report(metrics: Dict[str, Any], out_dir: Path | str, command: Optional[str] = None,
                 include_examples: bool = False) -> Tuple[Path, Path]:
    """``metrics.json`` and ``report.md`` in ``out_dir``.

    Examples contain dataset text; they are written only to metrics.json when ``include_examples``
    (the default leaves them out so the outputs can be shared/committed safely).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(metrics)
    if not include_examples:
        data.pop("examples", None)
    mpath = out / "metrics.json"
    mpath.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    c, p = metrics["counts"], metrics["protocol"]
    lines = [
        "# Knowledge source: held-out evaluation on the ATOMIC-2020 sample", "",
        f"Command: `{command}`" if command else "",
        f"Split by head (seed {p['seed']}, held-out {p['holdout']}): {c['index_heads']} index heads "
        f"({c['index_rows']} rows), {c['heldout_heads']} held-out heads, {c['heldout_pairs_scored']} "
        f"held-out (head, relation) pairs scored ({c['heldout_pairs_all_none_skipped']} all-`none` pairs skipped). "
        f"k = {p['k']}, top_heads = {p['top_heads']}.", "",
        f"BLEU: {p['bleu']}. F1: {p['f1']}.", "",
        "| system | top-1 BLEU-1 | top-1 BLEU-2 | top-1 F1 | top-k BLEU-1 | top-k BLEU-2 | top-k F1 | best-of-k F1 | hit@k |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics["systems"].items():
        lines.append(
            f"| {name} | {m['top1_bleu1']:.1f} | {m['top1_bleu2']:.1f} | {m['top1_f1']:.3f} | "
            f"{m['topk_bleu1']:.1f} | {m['topk_bleu2']:.1f} | {m['topk_f1']:.3f} | {m['bestk_f1']:.3f} | {m['hit_at_k']:.3f} |"
        )
    lines += ["", "Top-1 BLEU-1 by relation (n = held-out pairs):", "",
              "| relation | n | " + " | ".join(metrics["per_relation"]) + " |",
              "|---|---|" + "---|" * len(metrics["per_relation"])]
    first = next(iter(metrics["per_relation"].values()))
    for rel in first:
        cells = [f"{metrics['per_relation'][s].get(rel, {}).get('top1_bleu1', 0.0):.1f}" for s in metrics["per_relation"]]
        lines.append(f"| {rel} | {first[rel]['n']} | " + " | ".join(cells) + " |")
    rpath = out / "report.md"
    rpath.write_text("\n".join(l for l in lines) + "\n", encoding="utf-8")
    return mpath, rpath
