"""The dialogue: one utterance type, one pair of role vocabularies, one converter each way.

Everything that turns what a client sends into the dialogue the models read lives here:

* :class:`Utterance` — ``role`` is ``"speaker"`` (the user) or ``"listener"`` (the assistant), the
  EmpatheticDialogues vocabulary every model was trained with;
* the API's vocabulary is ``"user"`` / ``"bot"`` (Rasa's event names, ``/perceive``'s history):
  :data:`API_ROLES` maps it onto ED's;
* :func:`dialogue_from_events` — Rasa tracker events → :class:`DialogueView` (``/nlg``);
  :func:`history_from_roles` — ``/perceive``'s ``history`` + ``text`` → utterances;
* :func:`anonymous_message_key` / :attr:`DialogueView.message_key` — the one key of a user turn
  (Rasa's message id, or a stand-in when a client sends none), used by ``/perceive`` and ``/nlg``
  alike so both find the same stored turn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

SPEAKER, LISTENER = "speaker", "listener"
#: the roles of :class:`Utterance` (ED's)
ROLES = (SPEAKER, LISTENER)
#: the API's roles (Rasa's event names) → ED's
API_ROLES = {"user": SPEAKER, "bot": LISTENER}


@dataclass(frozen=True)
class Utterance:
    """One utterance of a dialogue. ``role`` is ``"speaker"`` (the user) or ``"listener"``."""

    role: str
    text: str


@dataclass
class DialogueView:
    """The dialogue rebuilt from Rasa tracker events."""

    turns: List[Utterance]
    last_user_text: Optional[str]
    last_message_id: Optional[str]
    last_parse_data: Dict[str, Any]
    user_turn_count: int
    slots: Dict[str, Any] = field(default_factory=dict)
    bot_texts: List[str] = field(default_factory=list)  # every assistant utterance of the tracker, oldest first
    user_texts: List[str] = field(default_factory=list)  # every user utterance of the tracker, oldest first

    @property
    def message_key(self) -> Optional[str]:
        """Identifies the latest user turn: Rasa's message id (a stable stand-in when a client sends none)."""
        if self.last_user_text is None:
            return None
        return turn_key(self.last_message_id, self.user_turn_count, self.last_user_text)


def turn_key(message_id: Optional[str], user_turns: int, text: str) -> str:
    """The one key of a user turn, for ``/perceive`` and ``/nlg`` alike: the client's message id, or
    a stand-in from the turn's position (``user_turns``: how many user messages there are up to and
    including this one) and its text."""
    return message_id or anonymous_message_key(user_turns, text)


def anonymous_message_key(position: int, text: str) -> str:
    return f"anon-{position}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"


def dialogue_from_events(events: Sequence[Mapping[str, Any]], history_turns: int) -> DialogueView:
    """User events become speaker turns, bot events listener turns; other events are skipped."""
    turns: List[Utterance] = []
    last_text = last_id = None
    last_parse: Dict[str, Any] = {}
    user_count = 0
    for ev in events:
        kind = ev.get("event")
        text = ev.get("text")
        if kind == "user":
            user_count += 1
            last_text = text or ""
            last_id = ev.get("message_id")
            last_parse = ev.get("parse_data") or {}
            if text:
                turns.append(Utterance("speaker", text))
        elif kind == "bot" and text:
            turns.append(Utterance("listener", text))
    return DialogueView(
        turns=turns[-history_turns:],
        last_user_text=last_text,
        last_message_id=last_id,
        last_parse_data=last_parse,
        user_turn_count=user_count,
        bot_texts=[u.text for u in turns if u.role == "listener"],
        user_texts=[u.text for u in turns if u.role == "speaker"],
    )


def history_from_roles(history: Sequence[Mapping[str, str]], text: str, history_turns: int) -> List[Utterance]:
    """The /perceive input (``user``/``bot`` roles) as an ED-style dialogue ending with ``text``."""
    turns = [Utterance(API_ROLES[h["role"]], h["text"]) for h in history if h["text"]]
    turns.append(Utterance(SPEAKER, text))
    return turns[-history_turns:]
