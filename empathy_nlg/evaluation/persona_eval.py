"""``empathy-nlg eval-persona``: how well the persona extractor finds lasting self-descriptions.

The persona memory (:mod:`empathy_nlg.persona`) stores what :class:`PersonaExtractor` finds in a
user's messages; a fact it misses is never remembered, and a passing remark it takes for a fact is
brought back later where it does not belong. This command measures both on labelled messages.

Input files (JSON lines, any number, the kind told by each line's keys):

* extractor sets (``configs/persona/*.jsonl``): ``{"text": …, "fact": true, "keys": [...]}`` for a
  message that states a lasting fact (``keys``: words of which one must appear in an extracted
  fact), ``{"text": …, "fact": false}`` for one that states none;
* conversation scripts with a persona probe (``configs/conversations/persona*.jsonl``): the first
  turn of each script states the fact, its ``persona.recall`` words are the keys.

A message with a fact is **found** when one extracted fact contains one of its keys (whole words,
any case); a message without one is a **false fact** when anything is extracted. The command
prints a line per file, the misses and false facts with what was extracted, and a summary; with
``--out`` it writes ``persona_eval.json`` (every item and the totals).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", action="append", required=True, metavar="FILE",
                        help="an extractor set or a persona conversation script (JSON lines); repeatable")
    parser.add_argument("--out", default=None, help="write persona_eval.json into this folder")
    parser.add_argument("--quiet", action="store_true", help="only the per-file lines and the summary")


def load_items(path: Path) -> List[Dict[str, Any]]:
    """The labelled messages of ``path`` (see the module doc); a clear ``ValueError`` for a line
    that is neither kind."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    items: List[Dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str) and isinstance(row.get("fact"), bool):
            keys = row.get("keys") or []
            if row["fact"] and not (isinstance(keys, list) and keys and all(isinstance(k, str) and k.strip() for k in keys)):
                raise ValueError(f"{path}:{number}: a message with a fact needs a non-empty 'keys' list of words")
            items.append({"text": row["text"], "fact": row["fact"], "keys": list(keys), "id": f"{path.name}:{number}"})
        elif isinstance(row, dict) and isinstance(row.get("turns"), list) and isinstance(row.get("persona"), dict):
            keys = row["persona"].get("recall") or []
            if not row["turns"] or not keys:
                raise ValueError(f"{path}:{number}: a persona script needs turns and persona.recall words")
            items.append({"text": str(row["turns"][0]), "fact": True, "keys": [str(k) for k in keys],
                          "id": str(row.get("id") or f"{path.name}:{number}")})
        else:
            raise ValueError(f"{path}:{number}: neither an extractor item (text, fact[, keys]) "
                             "nor a persona script (turns, persona.recall)")
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def _has_key(facts: Sequence[str], keys: Sequence[str]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(k.lower())}(?!\w)", f.lower()) for f in facts for k in keys)


def score(items: Sequence[Mapping[str, Any]], facts: Sequence[Sequence[str]]) -> Dict[str, Any]:
    """Totals over ``items`` given the facts extracted from each: facts found (a key in a fact),
    any fact extracted, and false facts on messages without one (counts and percentages)."""
    positives = [(item, f) for item, f in zip(items, facts) if item["fact"]]
    negatives = [(item, f) for item, f in zip(items, facts) if not item["fact"]]
    found = sum(1 for item, f in positives if _has_key(f, item["keys"]))
    anything = sum(1 for _, f in positives if f)
    false = sum(1 for _, f in negatives if f)

    def pct(k: int, n: int) -> Optional[float]:
        return round(100.0 * k / n, 1) if n else None

    return {"with_fact": len(positives), "found": found, "found_pct": pct(found, len(positives)),
            "any_fact": anything, "any_fact_pct": pct(anything, len(positives)),
            "without_fact": len(negatives), "false_facts": false, "false_facts_pct": pct(false, len(negatives))}


def evaluate(paths: Sequence[Path], extractor: Any = None, quiet: bool = False, out: Any = None) -> Dict[str, Any]:
    """Run ``extractor`` (default: the project's :class:`PersonaExtractor`) over every file's items;
    print per-file lines, misses and false facts (to ``out``, default stdout), and return the
    per-file and total scores."""
    out = out or sys.stdout
    if extractor is None:
        from empathy_nlg.persona import PersonaExtractor

        extractor = PersonaExtractor()
    per_file: Dict[str, Any] = {}
    all_items: List[Dict[str, Any]] = []
    all_facts: List[List[str]] = []
    for path in paths:
        items = load_items(path)
        print(f"[eval-persona] {path}: {len(items)} messages …", file=sys.stderr, flush=True)
        facts = [[f.text for f in found] for found in extractor.extract_many([i["text"] for i in items])]
        result = score(items, facts)
        per_file[str(path)] = result
        print(f"{path}: facts found {_ratio(result['found'], result['with_fact'])}, false facts "
              f"{_ratio(result['false_facts'], result['without_fact'])}", file=out)
        for item, got in zip(items, facts):
            item["extracted"] = got
            if not quiet and item["fact"] and not _has_key(got, item["keys"]):
                print(f"  missed   {item['id']}: {item['text']!r} -> {got}", file=out)
            if not quiet and not item["fact"] and got:
                print(f"  false    {item['id']}: {item['text']!r} -> {got}", file=out)
        all_items.extend(items)
        all_facts.extend(facts)
    total = score(all_items, all_facts)
    print(f"summary: {len(paths)} file(s), {len(all_items)} messages; facts found "
          f"{_ratio(total['found'], total['with_fact'])} (anything extracted "
          f"{_ratio(total['any_fact'], total['with_fact'])}); false facts "
          f"{_ratio(total['false_facts'], total['without_fact'])}", file=out)
    return {"files": per_file, "total": total, "items": all_items}


def _ratio(k: int, n: int) -> str:
    return f"{k}/{n} ({100.0 * k / n:.1f} %)" if n else "—"


def run(args: argparse.Namespace) -> int:
    report = evaluate([Path(p) for p in args.data], quiet=args.quiet)
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "persona_eval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(f"written: {folder / 'persona_eval.json'}")
    return 0
