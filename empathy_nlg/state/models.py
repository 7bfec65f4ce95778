"""SQLAlchemy 2 models of the engine's conversation state.

Rasa's SQL tracker store keeps the events (table ``events``); these tables keep what the engine
adds per user turn: what perception found, and every reply the engine gave with the generator,
its version and the latency. The same database may hold both (SQLite file by default,
PostgreSQL via ``DATABASE_URL``). The schema is created by the Alembic migration in
``migrations/versions`` — never by ``create_all`` in production code.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, List, Optional

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    __tablename__ = "empathy_conversations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sender_id: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    persona: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    turns: Mapped[List["Turn"]] = relationship(back_populates="conversation", order_by="Turn.turn_index")


class Turn(Base):
    """One user turn: the message and what perception found in it (with its context)."""

    __tablename__ = "empathy_turns"
    __table_args__ = (
        UniqueConstraint("conversation_id", "turn_index", name="uq_turn_per_conversation"),
        UniqueConstraint("conversation_id", "message_id", name="uq_message_per_conversation"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("empathy_conversations.id", ondelete="CASCADE"), index=True)
    turn_index: Mapped[int] = mapped_column(Integer)
    message_id: Mapped[str] = mapped_column(String(255))
    user_text: Mapped[str] = mapped_column(Text)
    emotion: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    emotion_top_k: Mapped[Optional[Any]] = mapped_column(JSON, nullable=True)
    polarity: Mapped[Optional[str]] = mapped_column(String(16), nullable=True)
    causes: Mapped[Optional[Any]] = mapped_column(JSON, nullable=True)
    cm: Mapped[Optional[Any]] = mapped_column(JSON, nullable=True)
    crisis: Mapped[bool] = mapped_column(Boolean, default=False)
    crisis_score: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    perception_models: Mapped[Optional[Any]] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    conversation: Mapped[Conversation] = relationship(back_populates="turns")
    replies: Mapped[List["Reply"]] = relationship(back_populates="turn", order_by="Reply.id")


class Reply(Base):
    """One bot utterance the engine produced for a turn (a turn may have several, e.g. crisis)."""

    __tablename__ = "empathy_replies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    turn_id: Mapped[int] = mapped_column(ForeignKey("empathy_turns.id", ondelete="CASCADE"), index=True)
    response_name: Mapped[str] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text)
    generator: Mapped[str] = mapped_column(String(64))
    generator_version: Mapped[str] = mapped_column(String(255))
    knowledge: Mapped[Optional[Any]] = mapped_column(JSON, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    turn: Mapped[Turn] = relationship(back_populates="replies")


class PersonaFact(Base):
    """A lasting fact the user stated about themselves ("I work as a nurse"), per sender.

    Keyed by the sender id, not by a conversation row: it outlives Rasa's sessions, and forgetting
    it (:meth:`StateRepository.forget_persona`) touches no other table. ``fact_key`` is the hash of
    the normalised fact (``empathy_nlg.persona.fact_key``): one row per sender and fact.
    """

    __tablename__ = "empathy_persona_facts"
    __table_args__ = (UniqueConstraint("sender_id", "fact_key", name="uq_persona_fact_per_sender"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sender_id: Mapped[str] = mapped_column(String(255), index=True)
    fact: Mapped[str] = mapped_column(Text)
    fact_key: Mapped[str] = mapped_column(String(64))
    source_text: Mapped[str] = mapped_column(Text)
    message_id: Mapped[Optional[str]] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
