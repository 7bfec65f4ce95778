"""agent.lock_store.AtomicRedisLockStore against real Redis servers: two lock stores (two Rasa
servers) taking the same conversation's lock at the same moment never hold it together (the local
Redis); a Redis that goes away delays a turn, and one that stays away refuses it (a Redis server of
the test's own, killed and started again; end to end: tests/e2e/test_scale.py)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import List, Tuple

import pytest
from rasa.core.lock_store import LockStore
from rasa.utils.endpoints import EndpointConfig

from agent.lock_store import AtomicRedisLockStore
from agent.unavailable import StoreUnavailable, is_unavailable
from tests.services import PrivateRedis, running, unavailable

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def redis_ok() -> bool:
    try:
        import redis

        return bool(redis.StrictRedis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=3).ping())
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not redis_ok() and not os.environ.get("CI"),
                                reason="local Redis server not reachable (under CI the test runs, and fails)")


def overlaps(make_store, rounds: int = 12) -> int:
    """Rounds in which two stores (own connections, like two servers) both held the lock at once."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    stores = [make_store(prefix), make_store(prefix)]
    held: List[Tuple[float, float]] = []
    together = 0
    for round_ in range(rounds):
        conversation = f"c{round_}"
        gate = threading.Barrier(2)
        held.clear()

        async def critical(store: LockStore) -> None:
            async with store.lock(conversation, lock_lifetime=30, wait_time_in_seconds=0.02):
                start = time.monotonic()
                await asyncio.sleep(0.05)
                held.append((start, time.monotonic()))

        def server(store: LockStore) -> None:
            gate.wait(10)
            asyncio.run(critical(store))

        threads = [threading.Thread(target=server, args=(s,)) for s in stores]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
        assert len(held) == 2
        (a0, a1), (b0, b1) = sorted(held)
        together += b0 < a1
        assert stores[0].get_lock(conversation) is None  # tidied away after the last holder
    return together


def test_two_servers_never_hold_one_conversation_together():
    assert overlaps(lambda prefix: AtomicRedisLockStore(host=REDIS_HOST, port=REDIS_PORT, db=1, key_prefix=prefix)) == 0


def test_built_from_the_endpoints_entry_as_rasa_does():
    config = EndpointConfig.from_dict({"type": "agent.lock_store.AtomicRedisLockStore", "url": REDIS_HOST,
                                       "port": REDIS_PORT, "db": 1, "key_prefix": "assistant", "retry_seconds": 4})
    store = LockStore.create(config)
    assert isinstance(store, AtomicRedisLockStore) and store.key_prefix == "assistant:lock:"
    assert store.retry_seconds == 4.0
    ticket = store.issue_ticket("someone")
    assert store.issue_ticket("someone") == ticket + 1
    store.cleanup("someone", ticket)
    assert store.get_lock("someone").now_serving == ticket + 1
    store.cleanup("someone", ticket + 1)
    assert store.get_lock("someone") is None


# -- Redis going away --------------------------------------------------------------------------------
@pytest.fixture
def own_redis():
    if not PrivateRedis.available():
        unavailable("redis-server is not installed")
    with running(PrivateRedis()) as server:
        yield server


def store_on(server: PrivateRedis, retry_seconds: float) -> AtomicRedisLockStore:
    return AtomicRedisLockStore(host="127.0.0.1", port=server.port, db=1, key_prefix=f"t{uuid.uuid4().hex[:8]}",
                                retry_seconds=retry_seconds, socket_timeout=2)


def a_turn(store: AtomicRedisLockStore, ran: List[str], during=None) -> str:
    async def turn() -> str:
        async with store.lock("someone", lock_lifetime=30, wait_time_in_seconds=0.05):
            ran.append("handled")
            if during:
                during()
            return "reply"

    return asyncio.run(turn())


def test_a_redis_restart_delays_the_turn_instead_of_failing_it(own_redis, caplog):
    store, ran = store_on(own_redis, retry_seconds=10), []
    assert a_turn(store, ran) == "reply"  # a pooled connection now exists
    own_redis.kill()
    threading.Timer(1.0, own_redis.start).start()
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="agent.lock_store"):
        assert a_turn(store, ran) == "reply"
    assert time.monotonic() - started >= 0.9 and ran == ["handled", "handled"]
    assert "Redis is unreachable" in caplog.text and "retry 1" in caplog.text
    assert store.get_lock("someone") is None  # the ticket was given back to the restarted Redis


def test_a_redis_that_stays_away_refuses_the_turn_before_it_runs(own_redis):
    store, ran = store_on(own_redis, retry_seconds=1.0), []
    own_redis.kill()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        a_turn(store, ran)
    assert ran == [] and 0.9 <= time.monotonic() - started < 5  # refused within its wait, nothing handled
    assert is_unavailable(info.value) and info.value.store == "lock store"


def test_a_ticket_that_cannot_be_given_back_keeps_the_turns_reply(own_redis, caplog):
    store, ran = store_on(own_redis, retry_seconds=0.5), []
    with caplog.at_level("WARNING", logger="agent.lock_store"):
        assert a_turn(store, ran, during=own_redis.kill) == "reply"  # Redis gone while the turn ran
    assert ran == ["handled"] and "not given back" in caplog.text


def test_an_error_that_is_not_about_reaching_redis_is_not_waited_for(own_redis):
    store, ran = store_on(own_redis, retry_seconds=10), []

    def broken(_conversation_id, _lifetime):
        raise ValueError("a bug, not an outage")

    store.issue_ticket = broken
    started = time.monotonic()
    with pytest.raises(ValueError):
        a_turn(store, ran)
    assert ran == [] and time.monotonic() - started < 1
