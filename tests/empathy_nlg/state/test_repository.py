from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import inspect, text

from empathy_nlg.state.repository import ReplyRecord, StateRepository, TurnRecord, normalise_url, positive_shares
from tests.empathy_nlg.conftest import POSTGRES_URL, make_perception, postgres_available


def _exercise(repo: StateRepository, sender: str) -> None:
    repo.migrate()
    repo.migrate()  # idempotent
    assert repo.current_revision() == "0002_persona_facts"
    assert repo.record_turn(TurnRecord(sender, "m0", "I lost my job", make_perception("sad"))) == 0
    repo.record_reply(
        TurnRecord(sender, "m0", "I lost my job", make_perception("sad")),
        ReplyRecord("utter_empathize", "I'm so sorry.", "prompted", "v1", 1234.5, {"affect": ["upset"]}),
    )
    repo.record_reply(
        TurnRecord(sender, "m1", "and my dog is sick", make_perception("anxious")),
        ReplyRecord("utter_empathize", "That is a lot at once.", "prompted", "v1", 900.0),
    )
    assert repo.record_turn(TurnRecord(sender, "m2", "but I got promoted", make_perception("proud"))) == 2
    assert repo.record_turn(TurnRecord(sender, "m0", "I lost my job", make_perception("sad"))) == 0  # same message, same turn

    state = repo.conversation(sender)
    assert [t["turn_index"] for t in state["turns"]] == [0, 1, 2]
    first = state["turns"][0]
    assert first["emotion"] == "sad" and first["polarity"] == "negative"
    assert first["emotion_top_k"][0]["label"] == "sad" and len(first["emotion_top_k"]) == 5
    assert first["replies"][0]["generator"] == "prompted" and first["replies"][0]["knowledge"] == {"affect": ["upset"]}
    assert first["message_id"] == "m0"
    assert len(first["replies"]) == 1  # the turn row was updated, not duplicated
    emotions = lambda **kw: [h["emotion"] for h in repo.emotion_history(sender, **kw)]  # noqa: E731
    assert emotions() == ["sad", "anxious", "proud"]
    assert emotions(before_turn=2) == ["sad", "anxious"]
    assert emotions(limit=1) == ["proud"]
    shares = lambda **kw: positive_shares(repo.emotion_history(sender, **kw))  # noqa: E731
    pos = shares()  # P(positive) from the stored top-5 emotions, oldest first
    assert len(pos) == 3 and pos[0] < 0.1 and pos[1] < 0.1 and pos[2] > 0.9
    assert shares(before_turn=2) == pos[:2] and shares(limit=1) == pos[2:]
    assert emotions(before_turn=3) == ["sad", "anxious", "proud"] and shares(before_turn=3) == pos
    assert repo.conversation("nobody-" + sender) is None
    repo.set_persona(sender, "a night-shift nurse")
    assert repo.persona(sender) == "a night-shift nurse"


def test_repository_on_sqlite(sqlite_url):
    repo = StateRepository(sqlite_url)
    _exercise(repo, "alice")
    assert repo.count_rows() == {"conversations": 1, "turns": 3, "replies": 2}
    tables = set(inspect(repo.engine).get_table_names())
    assert {"empathy_conversations", "empathy_turns", "empathy_replies", "empathy_alembic_version"} <= tables


def test_crisis_flag_is_stored(sqlite_url):
    repo = StateRepository(sqlite_url)
    repo.migrate()
    repo.record_turn(TurnRecord("bob", "m0", "...", make_perception("sad", crisis=True)))
    assert repo.conversation("bob")["turns"][0]["crisis"] is True


def test_failed_reply_write_leaves_nothing(sqlite_url):
    repo = StateRepository(sqlite_url)
    repo.migrate()
    with pytest.raises(Exception):
        # text=None violates NOT NULL: the whole transaction (conversation + turn) must roll back
        repo.record_reply(TurnRecord("carol", "m0", "hello"), ReplyRecord("utter_greet", None, "template", "d", 1.0))  # type: ignore[arg-type]
    assert repo.count_rows() == {"conversations": 0, "turns": 0, "replies": 0}


def test_turn_indices_continue_across_rasa_sessions(sqlite_url):
    """Rasa sends only the current session's events; the stored index must not restart at 0."""
    repo = StateRepository(sqlite_url)
    repo.migrate()
    for i in range(3):
        repo.record_turn(TurnRecord("dan", f"session1-{i}", f"msg {i}", make_perception("sad")))
    assert repo.record_turn(TurnRecord("dan", "session2-0", "back again", make_perception("hopeful"))) == 3
    turns = repo.conversation("dan")["turns"]
    assert [t["user_text"] for t in turns] == ["msg 0", "msg 1", "msg 2", "back again"]


def test_url_normalisation():
    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.postgres
@pytest.mark.skipif(not postgres_available() and not os.environ.get("CI"),
                    reason="local PostgreSQL server not reachable (under CI the test runs, and fails)")
def test_repository_on_postgresql():
    repo = StateRepository(POSTGRES_URL)
    sender = f"pg-{uuid.uuid4().hex[:8]}"
    try:
        _exercise(repo, sender)
        with repo.engine.connect() as c:
            n = c.execute(text("select count(*) from empathy_turns t join empathy_conversations c on c.id=t.conversation_id where c.sender_id=:s"), {"s": sender}).scalar()
        assert n == 3
    finally:
        with repo.engine.begin() as c:
            c.execute(text("delete from empathy_conversations where sender_id=:s"), {"s": sender})
        repo.dispose()


@pytest.mark.postgres
@pytest.mark.skipif(not postgres_available() and not os.environ.get("CI"),
                    reason="local PostgreSQL server not reachable (under CI the test runs, and fails)")
def test_engines_starting_together_migrate_a_fresh_postgresql_database_one_after_another():
    """`make serve-scaled` starts two engines on one new database; each migrates at start. Separate
    processes, as in the stack (Alembic's context is per process): without the advisory lock two of
    three failed with a duplicate key."""
    import subprocess
    import sys

    import psycopg

    name = f"empathy_migrate_{uuid.uuid4().hex[:8]}"
    admin = POSTGRES_URL.replace("+psycopg", "").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    try:
        code = f"from empathy_nlg.state.repository import StateRepository; StateRepository({url!r}).migrate()"
        procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
        failures = [p.stderr.read()[-500:] for p in procs if p.wait(120) != 0]
        assert not failures, failures
        repo = StateRepository(url)
        assert repo.current_revision() == "0002_persona_facts"
        repo.dispose()
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
