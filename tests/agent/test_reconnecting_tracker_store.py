"""agent.tracker_store.ReconnectingSQLTrackerStore: Rasa's SQL tracker store that waits for its
database instead of losing a turn to Rasa's in-memory fail-safe (the restart itself, end to end:
tests/e2e/test_scale.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

from typing import Any, Dict, List

import pytest
from rasa.core.tracker_store import FailSafeTrackerStore, SQLTrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import BotUttered, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker
from sqlalchemy.exc import IntegrityError, OperationalError

from agent.tracker_store import ReconnectingSQLTrackerStore
from agent.unavailable import StoreUnavailable, is_unavailable
from tests.agent.test_tracker_store_postgres import postgres_ok

SECRET = "my dog died this morning"


def store_on(tmp_path, **kwargs) -> ReconnectingSQLTrackerStore:
    return ReconnectingSQLTrackerStore(Domain.empty(), dialect="sqlite", db=str(tmp_path / "t.db"), **kwargs)


def tracker(sender: str) -> DialogueStateTracker:
    return DialogueStateTracker.from_events(sender, [UserUttered(SECRET), BotUttered("I'm so sorry.")])


def database_down() -> OperationalError:
    # as SQLAlchemy raises it: the statement and its parameters (the user's words) in its text
    return OperationalError("INSERT INTO events (data) VALUES (?)", (SECRET,), Exception("server closed the connection unexpectedly"))


def failing(times: int, error=database_down):
    """Replace ``session_scope`` so that its first ``times`` uses fail as a database that is down."""
    calls = {"n": 0}

    def wrap(original):
        def session_scope():
            calls["n"] += 1
            if calls["n"] <= times:
                raise error()
            return original()

        return session_scope

    return calls, wrap


def test_round_trip_with_pre_ping(tmp_path):
    store = store_on(tmp_path)
    assert store.engine.pool._pre_ping
    asyncio.run(store.save(tracker("a")))
    again = asyncio.run(store.retrieve("a"))
    assert [e.as_dict()["event"] for e in again.events] == ["user", "bot"]


class Broker:
    """An event broker that keeps what it is given."""

    def __init__(self) -> None:
        self.published: List[Dict[str, Any]] = []

    def publish(self, event: Dict[str, Any]) -> None:
        self.published.append(event)


def test_a_database_that_is_away_for_a_moment_delays_the_turn_and_loses_nothing(tmp_path, caplog):
    store = store_on(tmp_path, retry_seconds=10)
    store.event_broker = Broker()
    calls, wrap = failing(3)
    store.session_scope = wrap(store.session_scope)
    with caplog.at_level(logging.WARNING, logger="agent.tracker_store"):
        asyncio.run(store.save(tracker("b")))
    assert calls["n"] >= 4
    assert [e.as_dict()["event"] for e in asyncio.run(store.retrieve("b")).events] == ["user", "bot"]
    # the event broker got the turn's events once, however many attempts the write took
    assert [e["event"] for e in store.event_broker.published] == ["user", "bot"]
    # and once only, however many attempts it took
    asyncio.run(store.save(asyncio.run(store.retrieve("b"))))
    assert len(asyncio.run(store.retrieve("b")).events) == 2 and len(store.event_broker.published) == 2
    assert "retry 3" in caplog.text and "server closed the connection" in caplog.text
    assert SECRET not in caplog.text and "INSERT" not in caplog.text  # the driver's words only


def test_a_database_that_stays_away_refuses_the_turn_after_retry_seconds(tmp_path):
    store = store_on(tmp_path, retry_seconds=1.2, away_retry_seconds=0.2)
    store.event_broker = Broker()
    calls, wrap = failing(1000)
    store.session_scope = wrap(store.session_scope)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        asyncio.run(store.retrieve("c"))
    first = time.monotonic() - start
    assert 1.0 <= first < 4 and calls["n"] >= 2 and is_unavailable(info.value)
    assert isinstance(info.value.__cause__, OperationalError) and SECRET not in str(info.value)
    # known to be away now: the next turn is refused after the short wait, not the whole window
    start = time.monotonic()
    with pytest.raises(StoreUnavailable):
        asyncio.run(store.save(tracker("c")))
    assert time.monotonic() - start < 0.8 and store.away_since is not None
    assert store.event_broker.published == []  # a refused turn is published to nobody
    # the database back: the first call that reaches it ends the state
    calls["n"] = 10**6
    asyncio.run(store.save(tracker("c")))
    assert store.away_since is None and len(asyncio.run(store.retrieve("c")).events) == 2


def test_rasas_fail_safe_lets_a_refusal_through_and_still_catches_other_errors(tmp_path):
    """Rasa wraps every tracker store in FailSafeTrackerStore: it used to answer a database that
    stayed away with an empty conversation (retrieve) or a turn kept in memory only (save)."""
    store = store_on(tmp_path, retry_seconds=0.3)
    _calls, wrap = failing(1000)
    store.session_scope = wrap(store.session_scope)
    safe = FailSafeTrackerStore(store)
    with pytest.raises(StoreUnavailable):
        asyncio.run(safe.retrieve("e"))
    with pytest.raises(StoreUnavailable):
        asyncio.run(safe.save(tracker("e")))
    assert safe._fallback_tracker_store is None  # nothing kept in memory instead

    (tmp_path / "other").mkdir()
    other = store_on(tmp_path / "other", retry_seconds=0.3)
    _calls, wrap = failing(1000, error=lambda: IntegrityError("INSERT", (), Exception("duplicate key")))
    other.session_scope = wrap(other.session_scope)
    safe = FailSafeTrackerStore(other)
    asyncio.run(safe.save(tracker("f")))  # any other error: Rasa's fallback, as before
    assert asyncio.run(safe.fallback_tracker_store.retrieve("f")) is not None


def test_an_error_about_the_statement_is_not_retried(tmp_path):
    store = store_on(tmp_path, retry_seconds=10)
    calls, wrap = failing(1, error=lambda: IntegrityError("INSERT", (), Exception("duplicate key")))
    store.session_scope = wrap(store.session_scope)
    with pytest.raises(IntegrityError):
        asyncio.run(store.save(tracker("d")))
    assert calls["n"] == 1


@pytest.mark.skipif(not postgres_ok() and not os.environ.get("CI"),
                    reason="local PostgreSQL server not reachable (under CI the test runs, and fails)")
def test_connections_the_server_ended_are_replaced_on_postgresql():
    """What a restart does to a pool: the server ends every session. Rasa's own store fails on its
    next use of a pooled connection (and its fail-safe then drops the turn); this one pings first."""
    import psycopg2

    def ended(app: str) -> None:
        with psycopg2.connect(host="127.0.0.1", user="postgres", dbname="test", connect_timeout=3) as admin:
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app,))
                assert cur.rowcount >= 1

    for cls, survives in ((SQLTrackerStore, False), (ReconnectingSQLTrackerStore, True)):
        app = f"t{uuid.uuid4().hex[:10]}"
        store = cls(Domain.empty(), dialect="postgresql", host="127.0.0.1", port=5432, username="postgres", db="test",
                    query={"application_name": app})
        sender = f"pg-{app}"
        try:
            asyncio.run(store.save(tracker(sender)))  # a pooled connection now exists
            ended(app)
            if survives:
                assert len(asyncio.run(store.retrieve(sender)).events) == 2
            else:
                with pytest.raises(OperationalError):
                    asyncio.run(store.retrieve(sender))
        finally:
            with store.engine.begin() as con:
                con.exec_driver_sql("DELETE FROM events WHERE sender_id = %(s)s", {"s": sender})
            store.engine.dispose()
