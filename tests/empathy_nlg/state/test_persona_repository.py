"""Persona memory in SQL: idempotent add, list, forget — on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import inspect, text

from empathy_nlg.state.repository import PersonaRecord, ReplyRecord, StateRepository, TurnRecord
from tests.empathy_nlg.conftest import POSTGRES_URL, make_perception, postgres_available


def _exercise(repo: StateRepository, sender: str) -> None:
    repo.migrate()
    assert repo.current_revision() == "0002_persona_facts"
    other = sender + "-other"
    # a turn with a reply and a crisis turn: forgetting the persona must leave them
    repo.record_reply(TurnRecord(sender, "m0", "I have two kids", make_perception("sad")),
                      ReplyRecord("utter_empathize", "Tell me about them.", "echo", "t", 1.0),
                      [PersonaRecord(sender, "I have two kids", "I have two kids", "m0")])
    repo.record_turn(TurnRecord(sender, "m1", "I want to kill myself", make_perception("sad", crisis=True)))
    assert repo.add_persona_facts([
        PersonaRecord(sender, "I work as a nurse", "I work as a nurse and I'm tired", "m2"),
        PersonaRecord(sender, "i work as  nurse.", "again", "m3"),  # near-identical: kept once, the first
        PersonaRecord(other, "I live in Leeds", "I live in Leeds", "x0"),
    ]) == 2
    assert repo.add_persona_facts([PersonaRecord(sender, "I have two kids", "I have two kids", "m9")]) == 0  # idempotent
    facts = repo.persona_facts(sender)
    assert [f["fact"] for f in facts] == ["I have two kids", "I work as a nurse"]  # oldest first
    assert facts[1]["source_text"] == "I work as a nurse and I'm tired" and facts[1]["message_id"] == "m2"
    assert facts[0]["created_at"] <= facts[1]["created_at"]
    assert [f["fact"] for f in repo.persona_facts(sender, limit=1)] == ["I work as a nurse"]  # the newest
    repo.set_persona(sender, "a night-shift nurse")  # the older, per-conversation persona column

    assert repo.forget_persona(sender) == 2
    assert repo.persona_facts(sender) == [] and repo.persona(sender) is None
    assert repo.forget_persona(sender) == 0  # idempotent
    state = repo.conversation(sender)  # nothing else is lost
    assert [t["message_id"] for t in state["turns"]] == ["m0", "m1"]
    assert state["turns"][1]["crisis"] is True and state["turns"][0]["replies"][0]["text"] == "Tell me about them."
    assert [f["fact"] for f in repo.persona_facts(other)] == ["I live in Leeds"]  # other senders keep theirs
    # remembered again after forgetting
    assert repo.add_persona_facts([PersonaRecord(sender, "I have two kids", "I have two kids", "m4")]) == 1


def _cleanup(repo: StateRepository, *senders: str) -> None:
    with repo.engine.begin() as c:
        for s in senders:
            c.execute(text("delete from empathy_persona_facts where sender_id=:s"), {"s": s})
            c.execute(text("delete from empathy_conversations where sender_id=:s"), {"s": s})


def test_persona_memory_on_sqlite(sqlite_url):
    repo = StateRepository(sqlite_url)
    _exercise(repo, "alice")
    assert "empathy_persona_facts" in set(inspect(repo.engine).get_table_names())
    assert repo.count_rows() == {"conversations": 1, "turns": 2, "replies": 1}


def test_persona_facts_survive_a_restart(sqlite_url):
    """Facts live in SQL keyed by sender: a new repository (an engine restart) still has them."""
    repo = StateRepository(sqlite_url)
    repo.migrate()
    repo.add_persona_facts([PersonaRecord("bob", "My dog is called Max", "My dog is called Max", "m0")])
    repo.dispose()
    again = StateRepository(sqlite_url)
    again.migrate()
    assert [f["fact"] for f in again.persona_facts("bob")] == ["My dog is called Max"]


def test_a_failed_turn_write_stores_no_facts(sqlite_url):
    repo = StateRepository(sqlite_url)
    repo.migrate()
    with pytest.raises(Exception):
        repo.record_reply(TurnRecord("carol", "m0", "I'm a nurse"), ReplyRecord("utter_greet", None, "template", "d", 1.0),  # type: ignore[arg-type]
                          [PersonaRecord("carol", "I'm a nurse", "I'm a nurse", "m0")])
    assert repo.count_persona_facts() == 0


def test_unlearning_the_facts_of_a_crisis_turn(sqlite_url):
    repo = StateRepository(sqlite_url)
    repo.migrate()
    repo.record_turn(TurnRecord("dan", "m0", "I'm a nurse"), [PersonaRecord("dan", "I'm a nurse", "I'm a nurse", "m0")])
    repo.record_turn(TurnRecord("dan", "m1", "I live in Leeds"), [PersonaRecord("dan", "I live in Leeds", "I live in Leeds", "m1")])
    repo.record_reply(TurnRecord("dan", "m1", "I live in Leeds", make_perception("sad", crisis=True)),
                      ReplyRecord("utter_crisis_support", "…", "crisis-override", "scripted", 1.0), unlearn=True)
    assert [f["fact"] for f in repo.persona_facts("dan")] == ["I'm a nurse"]


def test_migration_downgrade_removes_only_the_persona_table(sqlite_url):
    from alembic import command

    from empathy_nlg.state.repository import alembic_config

    repo = StateRepository(sqlite_url)
    repo.migrate()
    with repo.engine.begin() as connection:
        cfg = alembic_config(repo.url)
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0001_initial")
    tables = set(inspect(repo.engine).get_table_names())
    assert "empathy_persona_facts" not in tables and "empathy_turns" in tables
    repo.migrate()
    assert repo.current_revision() == "0002_persona_facts"


@pytest.mark.postgres
@pytest.mark.skipif(not postgres_available() and not os.environ.get("CI"),
                    reason="local PostgreSQL server not reachable (under CI the test runs, and fails)")
def test_persona_memory_on_postgresql():
    repo = StateRepository(POSTGRES_URL)
    sender = f"pg-persona-{uuid.uuid4().hex[:8]}"
    try:
        _exercise(repo, sender)
    finally:
        _cleanup(repo, sender, sender + "-other")
        repo.dispose()
