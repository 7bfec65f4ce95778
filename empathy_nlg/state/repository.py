"""The state repository: the only code that reads or writes the engine's tables.

Every write is one transaction: a reply is stored together with its turn (created or updated) or
not at all. ``DATABASE_URL`` selects the database (SQLite file by default; PostgreSQL with
``postgresql+psycopg://…``). :meth:`StateRepository.migrate` brings the schema to the newest
Alembic revision and is safe to call at every start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from sqlalchemy import create_engine, delete, event, func, select
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, selectinload, sessionmaker

from empathy_nlg.perception.types import Perception
from empathy_nlg.persona import MAX_FACT_CHARS, clean_text, fact_key
from empathy_nlg.state.models import Conversation, PersonaFact, Reply, Turn, utcnow
from empathy_nlg.taxonomy import polarity_of

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The engine's own Alembic version table, so its history never collides with another app's.
VERSION_TABLE = "empathy_alembic_version"
# The advisory lock the engine's migrations hold on PostgreSQL (any fixed 64-bit number that no other
# application of the database uses for its own lock; this one spells "empathy1" in ASCII).
MIGRATION_LOCK_KEY = 0x656D706174687931


def positive_shares(history: List[Dict[str, Any]]) -> List[float]:
    """For each turn of an :meth:`Repository.emotion_history` with a stored top-5: the share of its
    emotion probability that falls on MIME's positive group (the story's polarity so far)."""
    out = []
    for turn in history:
        top = turn["top_k"]
        total = sum(float(e["prob"]) for e in top)
        if total > 0:
            out.append(sum(float(e["prob"]) for e in top if polarity_of(e["label"]) == "positive") / total)
    return out


def normalise_url(url: str) -> str:
    """Accept the URL spellings users paste (``postgres://``, ``postgresql://``) and pick psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def database_url(explicit: Optional[str] = None) -> str:
    url = explicit or os.environ.get("DATABASE_URL")
    if not url:
        raise ValueError("no database configured: set DATABASE_URL or `state.database_url` in the engine config")
    return normalise_url(url)


@dataclass
class TurnRecord:
    """A user turn, identified by its message id (Rasa gives every user message one).

    The conversation-wide ``turn_index`` is assigned by the repository (0, 1, 2, … in arrival
    order), because Rasa hands over only the current session's events: counting them would start
    again at 0 after a session expires.
    """

    sender_id: str
    message_id: str
    user_text: str
    perception: Optional[Perception] = None


@dataclass
class ReplyRecord:
    response_name: str
    text: str
    generator: str
    generator_version: str
    latency_ms: float
    knowledge: Optional[Dict[str, List[str]]] = None


@dataclass
class PersonaRecord:
    """A persona fact to remember for ``sender_id``: the fact, the message it came from (its text and
    Rasa's message id, when there is one)."""

    sender_id: str
    fact: str
    source_text: str
    message_id: Optional[str] = None


class StateRepository:
    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = normalise_url(url)
        kwargs: Dict[str, Any] = {"echo": echo, "future": True}
        if self.url.startswith("sqlite"):
            # Rasa's tracker store may share the file: wait for its locks instead of failing.
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
            path = self.url.split("///", 1)[-1]
            if path and path != ":memory:" and "///" in self.url:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    # -- schema -----------------------------------------------------------------------------
    def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema with Alembic (idempotent).

        On PostgreSQL the upgrade holds a transaction-scoped advisory lock, so several engines
        starting together on one database (``make serve-scaled``, replicas of a deployment) migrate
        one after another: without it, two of them on a fresh database both create the tables and
        all but one stop with a duplicate-key error (measured: 3 processes at once, 2 of 3 failed).
        """
        import logging

        logging.getLogger("alembic").setLevel(logging.WARNING)
        from alembic import command

        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sql_text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)

    def current_revision(self) -> Optional[str]:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()

    # -- writes -----------------------------------------------------------------------------
    def _conversation(self, session: Session, sender_id: str) -> Conversation:
        conv = session.scalar(select(Conversation).where(Conversation.sender_id == sender_id))
        if conv is None:
            conv = Conversation(sender_id=sender_id)
            session.add(conv)
            session.flush()
        return conv

    def _upsert_turn(self, session: Session, record: TurnRecord) -> Turn:
        conv = self._conversation(session, record.sender_id)
        turn = session.scalar(
            select(Turn).where(Turn.conversation_id == conv.id, Turn.message_id == record.message_id)
        )
        if turn is None:
            last = session.scalar(select(func.max(Turn.turn_index)).where(Turn.conversation_id == conv.id))
            turn = Turn(
                conversation_id=conv.id,
                turn_index=0 if last is None else last + 1,
                message_id=record.message_id,
                user_text=record.user_text,
            )
            session.add(turn)
        turn.user_text = record.user_text
        p = record.perception
        if p is not None:
            turn.emotion = p.emotion
            turn.emotion_top_k = p.top_k(5)
            turn.polarity = p.polarity
            turn.causes = [{"index": c.index, "text": c.text, "score": round(c.score, 4), "spans": c.spans} for c in p.causes]
            turn.cm = {k: round(v, 4) for k, v in p.cm.items()}
            # a turn once flagged stays flagged: a later request for the same message (Rasa asks for
            # each response of a turn separately) must not clear what an earlier one established
            turn.crisis = bool(p.crisis) or bool(turn.crisis)
            turn.crisis_score = max(float(p.crisis_score), float(turn.crisis_score or 0.0))
            turn.perception_models = dict(p.models)
        turn.updated_at = utcnow()
        conv.updated_at = utcnow()
        session.flush()
        return turn

    def turn_index_of(self, sender_id: str, message_id: str) -> int:
        """The index the turn of ``message_id`` has (or will get when it is first written): a read,
        so a request can consult the conversation before its one write (:meth:`record_reply`)."""
        with self._sessions() as session:
            conv = session.scalar(select(Conversation).where(Conversation.sender_id == sender_id))
            if conv is None:
                return 0
            index = session.scalar(select(Turn.turn_index).where(Turn.conversation_id == conv.id, Turn.message_id == message_id))
            if index is not None:
                return int(index)
            last = session.scalar(select(func.max(Turn.turn_index)).where(Turn.conversation_id == conv.id))
            return 0 if last is None else int(last) + 1

    def record_turn(self, record: TurnRecord, facts: Sequence[PersonaRecord] = ()) -> int:
        """Create or update the turn's row (and remember ``facts`` in the same transaction); returns
        its conversation-wide turn index."""
        with self._sessions.begin() as session:
            index = self._upsert_turn(session, record).turn_index
            self._add_facts(session, facts)
            return index

    def record_reply(self, record: TurnRecord, reply: ReplyRecord, facts: Sequence[PersonaRecord] = (),
                     unlearn: bool = False) -> int:
        """Store a reply with its turn (and the persona ``facts`` of the turn), atomically; returns the
        reply id. ``unlearn``: forget the persona facts learnt from this turn's message earlier (a
        turn found to be a crisis only now: nothing is learnt from one)."""
        with self._sessions.begin() as session:
            turn = self._upsert_turn(session, record)
            if unlearn:
                session.execute(delete(PersonaFact).where(PersonaFact.sender_id == record.sender_id,
                                                          PersonaFact.message_id == record.message_id))
            self._add_facts(session, facts)
            row = Reply(
                turn_id=turn.id,
                response_name=reply.response_name,
                text=reply.text,
                generator=reply.generator,
                generator_version=reply.generator_version,
                knowledge=reply.knowledge or None,
                latency_ms=float(reply.latency_ms),
            )
            session.add(row)
            session.flush()
            return row.id

    # -- persona memory ---------------------------------------------------------------------
    def _add_facts(self, session: Session, facts: Sequence[PersonaRecord]) -> int:
        """Insert the facts a sender does not have yet (same normalised fact: kept once, the first
        stays); concurrent writers of the same fact cannot fail the transaction."""
        rows: Dict[tuple, Dict[str, Any]] = {}
        for f in facts:
            text = clean_text(f.fact, MAX_FACT_CHARS)
            if not text:
                continue
            if not f.sender_id or len(f.sender_id) > 255:
                raise ValueError(f"invalid sender id {f.sender_id!r} for a persona fact")
            key = fact_key(text)
            rows.setdefault((f.sender_id, key), {
                "sender_id": f.sender_id, "fact": text, "fact_key": key,
                "source_text": clean_text(f.source_text, 4 * MAX_FACT_CHARS),
                "message_id": (f.message_id or None) and str(f.message_id)[:255], "created_at": utcnow(),
            })
        if not rows:
            return 0
        dialect = self.engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            added = 0
            for row in rows.values():  # one statement per fact keeps created_at ordered as stated
                stmt = (insert(PersonaFact).values(**row)
                        .on_conflict_do_nothing(index_elements=["sender_id", "fact_key"]).returning(PersonaFact.id))
                added += len(session.execute(stmt).all())
            return added
        existing = set(session.execute(
            select(PersonaFact.sender_id, PersonaFact.fact_key).where(
                PersonaFact.sender_id.in_({k[0] for k in rows}), PersonaFact.fact_key.in_({k[1] for k in rows}))
        ).all())
        new = [PersonaFact(**row) for key, row in rows.items() if key not in existing]
        session.add_all(new)
        session.flush()
        return len(new)

    def add_persona_facts(self, facts: Sequence[PersonaRecord]) -> int:
        """Remember persona facts (idempotent: a fact the sender already has is not added again);
        returns how many were new."""
        with self._sessions.begin() as session:
            return self._add_facts(session, facts)

    def persona_facts(self, sender_id: str, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """The sender's persona facts, oldest first (the newest ``limit`` when given):
        ``{fact, source_text, message_id, created_at}``."""
        with self._sessions() as session:
            stmt = (select(PersonaFact.fact, PersonaFact.source_text, PersonaFact.message_id, PersonaFact.created_at)
                    .where(PersonaFact.sender_id == sender_id)
                    .order_by(PersonaFact.created_at.desc(), PersonaFact.id.desc()))
            if limit is not None:
                stmt = stmt.limit(max(0, int(limit)))
            rows = session.execute(stmt).all()
        return [{"fact": r[0], "source_text": r[1], "message_id": r[2], "created_at": r[3].isoformat()} for r in reversed(rows)]

    def forget_persona(self, sender_id: str) -> int:
        """Forget everything the sender said about themselves: their persona facts and the legacy
        ``persona`` column of their conversation, in one transaction. Turns, replies and the crisis
        state stay. Returns how many facts were deleted."""
        with self._sessions.begin() as session:
            deleted = session.execute(delete(PersonaFact).where(PersonaFact.sender_id == sender_id)).rowcount or 0
            conv = session.scalar(select(Conversation).where(Conversation.sender_id == sender_id))
            if conv is not None and conv.persona is not None:
                conv.persona = None
            return int(deleted)

    def set_persona(self, sender_id: str, persona: Optional[str]) -> None:
        with self._sessions.begin() as session:
            self._conversation(session, sender_id).persona = persona

    # -- reads ------------------------------------------------------------------------------
    def emotion_history(self, sender_id: str, before_turn: Optional[int] = None, limit: int = 5) -> List[Dict[str, Any]]:
        """The perceived emotion of the conversation's latest turns that have one, oldest first (at
        most ``limit``; only turns before ``before_turn`` when given), in one query:
        ``{"emotion": label, "top_k": [{"label", "prob"}, …]}``."""
        with self._sessions() as session:
            stmt = (
                select(Turn.emotion, Turn.emotion_top_k)
                .join(Conversation)
                .where(Conversation.sender_id == sender_id, Turn.emotion.is_not(None))
                .order_by(Turn.turn_index.desc())
                .limit(limit)
            )
            if before_turn is not None:
                stmt = stmt.where(Turn.turn_index < before_turn)
            rows = session.execute(stmt).all()
        return [{"emotion": r[0], "top_k": r[1] or []} for r in reversed(rows)]

    def recent_replies(self, sender_id: str, limit: int = 20) -> List[Dict[str, Any]]:
        """The assistant's latest replies to this sender, oldest first: ``{turn_index, response, text, generator}``."""
        with self._sessions() as session:
            rows = session.execute(
                select(Turn.turn_index, Reply.response_name, Reply.text, Reply.generator)
                .join(Turn, Reply.turn_id == Turn.id)
                .join(Conversation)
                .where(Conversation.sender_id == sender_id)
                .order_by(Reply.id.desc())
                .limit(limit)
            ).all()
        return [{"turn_index": r[0], "response": r[1], "text": r[2], "generator": r[3]} for r in reversed(rows)]

    def recent_turns(self, sender_id: str, limit: int = 10, before_turn: Optional[int] = None) -> List[Dict[str, Any]]:
        """The latest user turns, oldest first: ``{turn_index, user_text, crisis, crisis_score}``."""
        with self._sessions() as session:
            stmt = (
                select(Turn.turn_index, Turn.user_text, Turn.crisis, Turn.crisis_score)
                .join(Conversation)
                .where(Conversation.sender_id == sender_id)
                .order_by(Turn.turn_index.desc())
                .limit(limit)
            )
            if before_turn is not None:
                stmt = stmt.where(Turn.turn_index < before_turn)
            rows = session.execute(stmt).all()
        return [{"turn_index": r[0], "user_text": r[1], "crisis": bool(r[2]), "crisis_score": r[3]} for r in reversed(rows)]

    def persona(self, sender_id: str) -> Optional[str]:
        with self._sessions() as session:
            return session.scalar(select(Conversation.persona).where(Conversation.sender_id == sender_id))

    def conversation(self, sender_id: str) -> Optional[Dict[str, Any]]:
        """The stored state of one conversation as plain data (``None`` when unknown)."""
        with self._sessions() as session:
            conv = session.scalar(
                select(Conversation)
                .where(Conversation.sender_id == sender_id)
                .options(selectinload(Conversation.turns).selectinload(Turn.replies))
            )
            if conv is None:
                return None
            return {
                "sender_id": conv.sender_id,
                "persona": conv.persona,
                "created_at": conv.created_at.isoformat(),
                "turns": [
                    {
                        "turn_index": t.turn_index,
                        "message_id": t.message_id,
                        "user_text": t.user_text,
                        "emotion": t.emotion,
                        "emotion_top_k": t.emotion_top_k,
                        "polarity": t.polarity,
                        "causes": t.causes,
                        "cm": t.cm,
                        "crisis": t.crisis,
                        "created_at": t.created_at.isoformat(),
                        "replies": [
                            {
                                "response": r.response_name,
                                "text": r.text,
                                "generator": r.generator,
                                "generator_version": r.generator_version,
                                "knowledge": r.knowledge,
                                "latency_ms": r.latency_ms,
                                "created_at": r.created_at.isoformat(),
                            }
                            for r in t.replies
                        ],
                    }
                    for t in conv.turns
                ],
            }

    def count_rows(self) -> Dict[str, int]:
        with self._sessions() as session:
            return {
                "conversations": session.scalar(select(func.count()).select_from(Conversation)) or 0,
                "turns": session.scalar(select(func.count()).select_from(Turn)) or 0,
                "replies": session.scalar(select(func.count()).select_from(Reply)) or 0,
            }

    def count_persona_facts(self, sender_id: Optional[str] = None) -> int:
        """Persona facts stored (of one sender when given)."""
        with self._sessions() as session:
            stmt = select(func.count()).select_from(PersonaFact)
            if sender_id is not None:
                stmt = stmt.where(PersonaFact.sender_id == sender_id)
            return int(session.scalar(stmt) or 0)

    def ping(self) -> bool:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
