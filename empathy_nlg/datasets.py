"""Readers for every data format the engine's commands accept.

Each reader takes a path to a file in the *original* format (the ones described in the data
README) and yields plain dataclasses. A malformed file raises :class:`DataFormatError` naming the
file and the line (or record) at fault, so a user sees what to fix instead of a traceback.

Formats
-------
``ed-jsonl``        EmpatheticDialogues conversations ``{conv_id, emotion, situation, turns:[{role, text}]}``
``ed-cause-jsonl``  Gao et al.'s tokenised conversations ``{conv_id, utters, context, emotion_cause}``
``situations-csv``  ``situation[,paraphrase],emotion`` rows
``reccon-json``     RECCON's DailyDialog annotation file ``{id: [[{turn, speaker, utterance, emotion,
                    expanded emotion cause evidence, ...}]]}``
``epitome-csv``     EPITOME ``sp_id, rp_id, seeker_post, response_post, level, rationales``
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from empathy_nlg.dialogue import Utterance  # noqa: F401  (re-exported: the data readers build utterances)
from empathy_nlg.taxonomy import normalise_emotion

ED_FORMATS = ("ed-jsonl", "ed-cause-jsonl")


class DataFormatError(ValueError):
    """A data file does not match the format it was read as."""

    def __init__(self, path: Path | str, where: str, problem: str) -> None:
        super().__init__(f"{path}: {where}: {problem}")
        self.path = str(path)
        self.where = where
        self.problem = problem


@dataclass
class Conversation:
    """An ED conversation. ``cause_indices`` index into ``turns`` (not only speaker turns)."""

    conv_id: str
    emotion: str
    turns: List[Utterance]
    situation: str = ""
    cause_indices: Optional[List[int]] = None


@dataclass
class GenerationExample:
    """A listener turn with at least one turn before it (the papers' generation example)."""

    conv_id: str
    turn_index: int
    context: List[Utterance]
    reference: str
    emotion: str
    cause_indices: Optional[List[int]] = None


@dataclass
class LabelledText:
    text: str
    label: str


@dataclass
class RecconUtterance:
    turn: int
    speaker: str
    text: str
    emotion: str
    cause_turns: List[int] = field(default_factory=list)  # 1-based turn numbers, as RECCON
    cause_spans: List[str] = field(default_factory=list)


@dataclass
class RecconDialogue:
    dialogue_id: str
    utterances: List[RecconUtterance]


@dataclass
class EpitomeExample:
    seeker_post: str
    response_post: str
    level: int  # 0 none, 1 weak, 2 strong
    rationales: List[str]

    @property
    def has_mechanism(self) -> bool:
        """IMAGINE merges weak and strong into "yes"."""
        return self.level > 0


def _open_text(path: Path | str):
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(p, "file", "does not exist or is not a file")
    return p, p.open("r", encoding="utf-8")


def _jsonl_records(path: Path | str) -> Iterator[tuple[int, dict]]:
    p, fh = _open_text(path)
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(p, f"line {lineno}", f"not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataFormatError(p, f"line {lineno}", "expected a JSON object")
            yield lineno, record


def _require(p: Path | str, lineno: int, record: dict, key: str, kind: type | tuple):
    if key not in record:
        raise DataFormatError(p, f"line {lineno}", f"missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataFormatError(p, f"line {lineno}", f"key {key!r} must be {names}")
    return value


def _emotion(p: Path | str, lineno: int, label: str) -> str:
    try:
        return normalise_emotion(label)
    except ValueError as exc:
        raise DataFormatError(p, f"line {lineno}", str(exc)) from None


def read_ed_jsonl(path: Path | str) -> List[Conversation]:
    """Read the raw-text ED conversations (``ed-jsonl``)."""
    out: List[Conversation] = []
    for lineno, rec in _jsonl_records(path):
        turns_raw = _require(path, lineno, rec, "turns", list)
        emotion = _emotion(path, lineno, _require(path, lineno, rec, "emotion", str))
        turns: List[Utterance] = []
        for j, t in enumerate(turns_raw):
            if not isinstance(t, dict) or not isinstance(t.get("text"), str):
                raise DataFormatError(path, f"line {lineno}", f"turn {j} must be an object with a 'text' string")
            role = t.get("role") or ("speaker" if j % 2 == 0 else "listener")
            if role not in ("speaker", "listener"):
                raise DataFormatError(path, f"line {lineno}", f"turn {j} has role {role!r}; expected speaker/listener")
            turns.append(Utterance(role=role, text=t["text"].strip()))
        if not turns:
            raise DataFormatError(path, f"line {lineno}", "conversation has no turns")
        out.append(
            Conversation(
                conv_id=str(rec.get("conv_id", f"line{lineno}")),
                emotion=emotion,
                turns=turns,
                situation=str(rec.get("situation", "") or ""),
            )
        )
    if not out:
        raise DataFormatError(path, "file", "no conversations found")
    return out


def read_ed_cause_jsonl(path: Path | str) -> List[Conversation]:
    """Read Gao et al.'s tokenised ED files (``ed-cause-jsonl``).

    ``utters`` alternate speaker/listener starting with the speaker; ``emotion_cause`` indexes
    ``utters``. Tokens are joined with single spaces (the text stays lower-cased and tokenised).
    """
    out: List[Conversation] = []
    for lineno, rec in _jsonl_records(path):
        utters = _require(path, lineno, rec, "utters", list)
        emotion = _emotion(path, lineno, _require(path, lineno, rec, "context", str))
        turns: List[Utterance] = []
        for j, u in enumerate(utters):
            if isinstance(u, list) and all(isinstance(tok, str) for tok in u):
                text = " ".join(u)
            elif isinstance(u, str):
                text = u
            else:
                raise DataFormatError(path, f"line {lineno}", f"utters[{j}] must be a list of tokens or a string")
            turns.append(Utterance(role="speaker" if j % 2 == 0 else "listener", text=text.strip()))
        if not turns:
            raise DataFormatError(path, f"line {lineno}", "conversation has no utterances")
        causes = rec.get("emotion_cause", [])
        if not isinstance(causes, list) or not all(isinstance(i, int) for i in causes):
            raise DataFormatError(path, f"line {lineno}", "'emotion_cause' must be a list of integers")
        bad = [i for i in causes if not 0 <= i < len(turns)]
        if bad:
            raise DataFormatError(path, f"line {lineno}", f"'emotion_cause' indices {bad} are out of range")
        out.append(
            Conversation(
                conv_id=str(rec.get("conv_id", f"line{lineno}")),
                emotion=emotion,
                turns=turns,
                cause_indices=sorted(set(causes)),
            )
        )
    if not out:
        raise DataFormatError(path, "file", "no conversations found")
    return out


def read_conversations(path: Path | str, fmt: str) -> List[Conversation]:
    """Read either ED format by its name."""
    if fmt == "ed-jsonl":
        return read_ed_jsonl(path)
    if fmt == "ed-cause-jsonl":
        return read_ed_cause_jsonl(path)
    raise ValueError(f"unknown conversation format {fmt!r}; expected one of {', '.join(ED_FORMATS)}")


def generation_examples(conversations: Sequence[Conversation]) -> List[GenerationExample]:
    """Every listener turn with at least one turn before it: context = the turns before it."""
    examples: List[GenerationExample] = []
    for conv in conversations:
        for i, turn in enumerate(conv.turns):
            if i == 0 or turn.role != "listener":
                continue
            causes = None
            if conv.cause_indices is not None:
                causes = [c for c in conv.cause_indices if c < i]
            examples.append(
                GenerationExample(
                    conv_id=conv.conv_id,
                    turn_index=i,
                    context=list(conv.turns[:i]),
                    reference=turn.text,
                    emotion=conv.emotion,
                    cause_indices=causes,
                )
            )
    return examples


def dialogue_until_last_speaker(conv: Conversation) -> List[Utterance]:
    """The dialogue up to and including its last speaker turn (emotion evaluation's input)."""
    last = max((i for i, t in enumerate(conv.turns) if t.role == "speaker"), default=len(conv.turns) - 1)
    return list(conv.turns[: last + 1])


def read_situations_csv(path: Path | str) -> List[LabelledText]:
    """Read ``situation[,paraphrase],emotion`` rows (header required)."""
    p, fh = _open_text(path)
    out: List[LabelledText] = []
    with fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "situation" not in fields or "emotion" not in fields:
            raise DataFormatError(p, "line 1", f"header must name 'situation' and 'emotion' columns, got {fields}")
        for row in reader:
            lineno = reader.line_num
            text = (row.get("situation") or "").strip()
            if not text:
                raise DataFormatError(p, f"line {lineno}", "empty situation")
            out.append(LabelledText(text=text, label=_emotion(p, lineno, row.get("emotion") or "")))
    if not out:
        raise DataFormatError(p, "file", "no rows found")
    return out


def read_reccon_json(path: Path | str) -> List[RecconDialogue]:
    """Read a RECCON DailyDialog annotation file (``reccon-json``)."""
    p, fh = _open_text(path)
    with fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataFormatError(p, f"line {exc.lineno}", f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DataFormatError(p, "top level", "expected an object mapping dialogue ids to dialogues")
    dialogues: List[RecconDialogue] = []
    for did, value in data.items():
        # RECCON wraps each dialogue in a one-element list.
        turns = value[0] if isinstance(value, list) and value and isinstance(value[0], list) else value
        if not isinstance(turns, list):
            raise DataFormatError(p, f"dialogue {did}", "expected a list of utterances")
        utts: List[RecconUtterance] = []
        for k, u in enumerate(turns):
            if not isinstance(u, dict) or not isinstance(u.get("utterance"), str):
                raise DataFormatError(p, f"dialogue {did}", f"utterance {k} must be an object with 'utterance'")
            evidence = u.get("expanded emotion cause evidence", []) or []
            cause_turns = sorted({int(e) for e in evidence if isinstance(e, int) or (isinstance(e, str) and e.isdigit())})
            utts.append(
                RecconUtterance(
                    turn=int(u.get("turn", k + 1)),
                    speaker=str(u.get("speaker", "")),
                    text=u["utterance"].strip(),
                    emotion=str(u.get("emotion", "neutral")).strip().lower(),
                    cause_turns=cause_turns,
                    cause_spans=[s for s in (u.get("expanded emotion cause span") or []) if isinstance(s, str)],
                )
            )
        dialogues.append(RecconDialogue(dialogue_id=str(did), utterances=utts))
    if not dialogues:
        raise DataFormatError(p, "file", "no dialogues found")
    return dialogues


def read_epitome_csv(path: Path | str) -> List[EpitomeExample]:
    """Read an EPITOME file (one mechanism per file)."""
    p, fh = _open_text(path)
    out: List[EpitomeExample] = []
    with fh:
        reader = csv.DictReader(fh)
        need = {"seeker_post", "response_post", "level"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise DataFormatError(p, "line 1", f"header lacks columns {sorted(missing)}")
        for row in reader:
            lineno = reader.line_num
            try:
                level = int(str(row["level"]).strip())
            except ValueError:
                raise DataFormatError(p, f"line {lineno}", f"level {row['level']!r} is not 0, 1 or 2") from None
            if level not in (0, 1, 2):
                raise DataFormatError(p, f"line {lineno}", f"level {level} is not 0, 1 or 2")
            rationales = [r.strip() for r in (row.get("rationales") or "").split("|") if r.strip()]
            out.append(
                EpitomeExample(
                    seeker_post=(row["seeker_post"] or "").strip(),
                    response_post=(row["response_post"] or "").strip(),
                    level=level,
                    rationales=rationales,
                )
            )
    if not out:
        raise DataFormatError(p, "file", "no rows found")
    return out


def seeker_post(context: Sequence[Utterance]) -> str:
    """The last speaker utterance of a context (the EPITOME "seeker post")."""
    for utt in reversed(context):
        if utt.role == "speaker":
            return utt.text
    return context[-1].text if context else ""
