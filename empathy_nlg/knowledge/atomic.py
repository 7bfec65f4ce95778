"""Reading the ATOMIC-2020 sample and mapping between ATOMIC's and the user's wording.

Files (see the data README):

* ``atomic2020_test_sample.tsv`` — ``head @@ relation<TAB>tail|tail|…`` (gold tails, may hold ``none``)
* ``comet_bart_generations.jsonl`` — ``{head, relation, tails, generations, greedy}`` (COMET-BART
  beam outputs for the same (head, relation) pairs; optional, used as extra candidates)

ATOMIC writes events about ``PersonX`` / ``PersonY`` / ``PersonZ`` with ``___`` for a blank; users
write "I failed my driving test". :func:`atomic_to_user` rewrites ATOMIC text into the user's
first-person surface form (``PersonX's`` → ``my``, sentence-initial ``PersonX`` → ``I``, other
``PersonX`` → ``me``, ``PersonY`` → ``someone``, ``___`` → ``something``); it is used both on the
heads that get embedded (so "I failed my driving test" lands next to "PersonX fails PersonX's
driving test") and on the tails that are returned. :func:`user_to_atomic` does the reverse for
querying a COMET model, which was trained on ``PersonX`` heads.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

ATOMIC_SUBDIR = "atomic2020_sample"
ATOMIC_TSV = "atomic2020_test_sample.tsv"
COMET_JSONL = "comet_bart_generations.jsonl"

#: bump when :func:`atomic_to_user` changes: it is part of every index key
MAPPING_VERSION = "1"
#: bump when :func:`atomic_tail_to_user` changes: it is part of every source version
TAIL_MAPPING_VERSION = "2"

_NONE_TAILS = {"none", "", "n/a", "na", "nothing"}


def is_none_tail(tail: str) -> bool:
    """ATOMIC's placeholder for "no inference" (``none``), or an empty string."""
    return tail.strip().strip(".").strip().lower() in _NONE_TAILS


def normalise_key(text: str) -> str:
    """Comparison key for de-duplication: lower-case, collapsed spaces, no trailing punctuation."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.rstrip(" .!?,;:")


_PERSON = r"Person\s?([XYZ])"


def atomic_to_user(text: str) -> str:
    """ATOMIC wording → first-person user wording (see the module docstring)."""
    if not text:
        return text
    others = {"Y": "someone", "Z": "someone else"}

    def possessive(m: "re.Match[str]") -> str:
        who = m.group(1)
        return "my" if who == "X" else f"{others[who]}'s"

    out = re.sub(_PERSON + r"\s?'s\b", possessive, text)

    def plain(m: "re.Match[str]") -> str:
        who = m.group(1)
        if who != "X":
            return others[who]
        before = out[: m.start()].rstrip()
        # Subject position (start of text, or after a conjunction/comma) → "I"; otherwise "me".
        if not before or before.endswith((",", ";", ".")) or re.search(r"\b(and|or|but|then|that)$", before):
            return "I"
        return "me"

    out = re.sub(_PERSON + r"\b", plain, out)
    out = out.replace("___", "something")
    out = re.sub(r"\s+", " ", out).strip()
    return out


def atomic_tail_to_user(tail: str) -> str:
    """A tail in user wording: ATOMIC's x-relation tails leave the subject implicit ("cries"),
    but some annotators wrote it ("PersonX cries"); a leading ``PersonX`` is dropped so both read
    the same (and de-duplicate), then :func:`atomic_to_user` rewrites the rest."""
    stripped = re.sub(r"^\s*Person\s?X\s+(?!'s\b)", "", tail)
    return atomic_to_user(stripped if stripped.strip() else tail)


_USER_PATTERNS: Tuple[Tuple[str, str], ...] = (
    (r"\bmyself\b", "PersonX"),
    (r"\bmy\b", "PersonX's"),
    (r"\bmine\b", "PersonX's"),
    (r"\bI'm\b", "PersonX is"),
    (r"\bI've\b", "PersonX has"),
    (r"\bI'll\b", "PersonX will"),
    (r"\bI'd\b", "PersonX would"),
    (r"\bI\b", "PersonX"),
    (r"\bme\b", "PersonX"),
)


def user_to_atomic(text: str) -> str:
    """First-person user wording → ATOMIC's ``PersonX`` form (for querying a COMET model)."""
    out = text
    for pattern, repl in _USER_PATTERNS:
        flags = 0 if pattern == r"\bI\b" else re.IGNORECASE
        out = re.sub(pattern, repl, out, flags=flags)
    return out


@dataclass
class AtomicRow:
    """One (head, relation) pair with its gold tails and (optionally) COMET-BART generations."""

    head: str
    relation: str
    tails: List[str]
    generations: List[str] = field(default_factory=list)


def resolve_atomic_paths(data_dir: Optional[Path | str] = None) -> Tuple[Path, Optional[Path]]:
    """Find the TSV (required) and the generations JSONL (optional).

    ``data_dir`` may be the data root (holding ``atomic2020_sample/``), the sample folder itself,
    or the TSV file. Default: :func:`empathy_nlg.paths.default_data_dir`. Raises
    ``FileNotFoundError`` telling the user which option / environment variable to set.
    """
    from empathy_nlg.paths import default_data_dir

    base = Path(data_dir) if data_dir else default_data_dir()
    candidates: List[Path] = []
    if base.is_file():
        candidates.append(base)
    else:
        candidates += [base / ATOMIC_SUBDIR / ATOMIC_TSV, base / ATOMIC_TSV]
    for tsv in candidates:
        if tsv.is_file():
            jsonl = tsv.parent / COMET_JSONL
            return tsv, (jsonl if jsonl.is_file() else None)
    raise FileNotFoundError(
        f"the ATOMIC-2020 sample was not found under {base} (looked for "
        f"{ATOMIC_SUBDIR}/{ATOMIC_TSV}); pass --data-dir DIR (config key 'data_dir') or set "
        f"EMPATHY_NLG_DATA to the folder that holds {ATOMIC_SUBDIR}/"
    )


def read_atomic_tsv(path: Path | str) -> List[AtomicRow]:
    """Parse ``head @@ relation<TAB>tail|tail|…`` rows (raw text, ``none`` kept)."""
    rows: List[AtomicRow] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            left, sep, right = line.partition("\t")
            if not sep or " @@ " not in left:
                raise ValueError(f"{path}: line {lineno}: expected 'head @@ relation<TAB>tails'")
            head, _, relation = left.rpartition(" @@ ")
            tails = [t.strip() for t in right.split("|")]
            rows.append(AtomicRow(head=head.strip(), relation=relation.strip(), tails=tails))
    return rows


def read_comet_generations(path: Path | str) -> Dict[Tuple[str, str], List[str]]:
    """``(head, relation) → generations`` (greedy first, then the beam outputs)."""
    out: Dict[Tuple[str, str], List[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (str(rec["head"]).strip(), str(rec["relation"]).strip())
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}: line {lineno}: not a generations record ({exc})") from exc
            gens = ([rec["greedy"]] if rec.get("greedy") else []) + list(rec.get("generations") or [])
            out.setdefault(key, []).extend(str(g).strip() for g in gens)
    return out


def load_atomic_rows(data_dir: Optional[Path | str] = None) -> Tuple[List[AtomicRow], str]:
    """All rows of the sample with their generations attached, and a content fingerprint."""
    tsv, jsonl = resolve_atomic_paths(data_dir)
    rows = read_atomic_tsv(tsv)
    digest = hashlib.sha256(tsv.read_bytes())
    if jsonl is not None:
        gens = read_comet_generations(jsonl)
        for row in rows:
            row.generations = list(gens.get((row.head, row.relation), []))
        digest.update(jsonl.read_bytes())
    return rows, digest.hexdigest()[:16]


def unique_in_order(items: Iterable[str]) -> List[str]:
    """Drop repeats (by :func:`normalise_key`), keeping the first spelling and the order."""
    seen: set = set()
    out: List[str] = []
    for item in items:
        key = normalise_key(item)
        if key and key not in seen:
            seen.add(key)
            out.append(item)
    return out


__all__: Sequence[str] = (
    "AtomicRow", "atomic_to_user", "atomic_tail_to_user", "user_to_atomic", "is_none_tail", "normalise_key",
    "resolve_atomic_paths", "read_atomic_tsv", "read_comet_generations", "load_atomic_rows",
    "unique_in_order",
)
