"""AtomicRedisLockStore: Rasa's Redis lock store with every change to a lock made atomically.

Configure in ``endpoints.yml`` (the keys of Rasa's ``type: redis`` lock store)::

    lock_store:
      type: agent.lock_store.AtomicRedisLockStore
      url: 127.0.0.1
      port: 6379
      db: 1
      key_prefix: assistant     # alphanumeric (Rasa's rule)

Why: with more than one Rasa server, Rasa's documentation asks for the Redis lock store, so that
the messages of one conversation are processed one at a time whichever server takes them. In Rasa
3.6.21 (the last open-source Rasa) that lock is a JSON list of tickets under one Redis key, and
every change to it — issuing a ticket, dropping an expired one, finishing — is a GET, a change in
Python and a SET. Two servers that take a message of the same conversation at the same moment both
read the lock before either writes it, both issue ticket 0, and both go ahead: each reads the same
tracker, and the second save drops events of the first (Rasa saves only the events beyond the
number already stored). Measured here: in ``tests/e2e/test_scale.py`` with Rasa's lock store, of two
messages of one conversation sent at the same moment to the two servers one was missing from the
tracker store; in ``tests/agent/test_lock_store.py``'s race, two of Rasa's lock stores held one
conversation's lock together in 7 rounds of 12 (this one: 0). (RasaHQ/rasa#9213 reports it; a fix,
``ConcurrentRedisLockStore``, was merged and then reverted out of open-source Rasa, #11256 / #11428.)

Here each change is one Redis transaction on the lock's key (``WATCH`` / ``MULTI`` / ``EXEC``,
retried when another server changed the key meanwhile), and finishing removes the ticket and
deletes the lock when no one else holds a ticket in the same transaction. Same keys, same format and
same waiting as Rasa's (polling every second), so servers can be switched one at a time.

**Redis going away.** Rasa's lock store fails a turn at the first Redis error (a ``LockError``, which
its channels turn into an error). Here every Redis call of a lock — taking a ticket, polling while
another message of the conversation is served, giving the ticket back — is retried for up to
``retry_seconds`` (10 s by default; an ``endpoints.yml`` key) while Redis cannot be reached, waiting
without blocking the server's event loop. So a Redis restart delays the turns in flight instead of
failing them. Past that window a turn that has no ticket yet is refused (:class:`StoreUnavailable`:
nothing of it was handled, and the channels ask the person to send it again); a turn that already ran
and cannot give its ticket back keeps its reply (the ticket expires by itself after the lock's
lifetime, and a Redis that restarted has forgotten it anyway). Redis here keeps its locks in memory
only: a restart while a conversation is being served forgets its lock, so a second message of that
same conversation arriving in that moment is not held back (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncGenerator, Callable, Optional, Text, Tuple, TypeVar

from rasa.core.lock import TicketLock
from rasa.core.lock_store import LOCK_LIFETIME, LockError, RedisLockStore
from rasa.utils.endpoints import EndpointConfig

from agent.unavailable import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class AtomicRedisLockStore(RedisLockStore):
    """``RedisLockStore`` whose ticket changes are Redis transactions (see the module's docstring)."""

    def __init__(self, endpoint_config: Optional[EndpointConfig] = None, retry_seconds: float = 10.0,
                 **kwargs: Any) -> None:
        # Rasa builds a lock store of a custom type as ``cls(endpoint_config=...)``
        if endpoint_config is not None:
            kwargs = {"host": endpoint_config.url or "localhost", **endpoint_config.kwargs, **kwargs}
            retry_seconds = float(kwargs.pop("retry_seconds", retry_seconds))
        super().__init__(**kwargs)
        self.retry_seconds = max(0.0, float(retry_seconds))

    # -- waiting for Redis -----------------------------------------------------------------------
    async def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """``call()`` (a synchronous Redis operation), retried while Redis cannot be reached, for up
        to ``retry_seconds``; then :class:`StoreUnavailable`. A ``LockError`` wrapping a connection
        error (``issue_ticket``) counts as one."""
        import redis

        started = time.monotonic()
        delay, attempts = 0.25, 0
        while True:
            try:
                result = call()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, LockError) as exc:
                cause = exc.__cause__ if isinstance(exc, LockError) else exc
                if not isinstance(cause, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
                    raise
                if time.monotonic() - started >= self.retry_seconds:
                    log.error("lock store %s: Redis stayed unreachable for %.1f s (%s)", what,
                              time.monotonic() - started, type(cause).__name__)
                    raise StoreUnavailable("lock store", time.monotonic() - started, type(cause).__name__) from exc
                attempts += 1
                delay = min(delay, max(0.05, started + self.retry_seconds - time.monotonic()))  # the last try at the end
                log.warning("lock store %s: Redis is unreachable (%s); retry %d in %.2f s", what,
                            type(cause).__name__, attempts, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if attempts:
                log.info("lock store %s: Redis answered again after %d retries", what, attempts)
            return result

    @asynccontextmanager
    async def lock(self, conversation_id: Text, lock_lifetime: float = LOCK_LIFETIME,
                   wait_time_in_seconds: float = 1) -> AsyncGenerator[TicketLock, None]:
        """Rasa's ``LockStore.lock`` with each Redis call waited for (module docstring)."""
        ticket = await self._retrying("issue", lambda: self.issue_ticket(conversation_id, lock_lifetime))
        try:
            yield await self._acquire_lock(conversation_id, ticket, wait_time_in_seconds)
        finally:
            try:
                await self._retrying("cleanup", lambda: self.cleanup(conversation_id, ticket))
            except StoreUnavailable:
                # the turn itself is done (and saved): keep its reply; the ticket expires by itself
                log.warning("lock store: ticket %d of a conversation not given back (Redis away); it expires "
                            "after %.0f s", ticket, lock_lifetime)

    async def _acquire_lock(self, conversation_id: Text, ticket: int, wait_time_in_seconds: float) -> TicketLock:
        """Rasa's ``LockStore._acquire_lock`` (3.6.21) with its Redis calls waited for."""
        while True:
            lock = await self._retrying("poll", lambda: self.get_lock(conversation_id))
            if not lock:  # the lock is gone (expired, or Redis restarted): Rasa's LockError, refused
                break
            if not lock.is_locked(ticket):
                return lock
            await asyncio.sleep(wait_time_in_seconds)
            await self._retrying("poll", lambda: self.update_lock(conversation_id))
        raise LockError(f"Could not acquire lock for conversation_id '{conversation_id}'.")

    def _change(self, conversation_id: Text,
                change: Callable[[Optional[TicketLock]], Tuple[Optional[TicketLock], bool, T]]) -> T:
        """Read the lock, ``change`` it, write it back — as one transaction. ``change`` returns the
        lock to store (``None``: delete the key), whether to write at all, and the result."""
        key = self.key_prefix + conversation_id

        def run(pipe: Any) -> T:
            raw = pipe.get(key)
            lock = TicketLock.from_dict(json.loads(raw)) if raw else None
            new, write, result = change(lock)
            pipe.multi()
            if write:
                if new is None:
                    pipe.delete(key)
                else:
                    pipe.set(key, new.dumps())
            return result

        return self.red.transaction(run, key, value_from_callable=True)

    def issue_ticket(self, conversation_id: Text, lock_lifetime: float = LOCK_LIFETIME) -> int:
        """Issue the next ticket of the conversation's lock (created when there is none)."""

        def issue(lock: Optional[TicketLock]) -> Tuple[Optional[TicketLock], bool, int]:
            lock = lock or self.create_lock(conversation_id)
            return lock, True, lock.issue_ticket(lock_lifetime)

        try:
            return self._change(conversation_id, issue)
        except Exception as exc:  # Rasa's contract: a LockError, which its channels report
            raise LockError(f"Error while acquiring lock. Error:\n{exc}") from exc

    def update_lock(self, conversation_id: Text) -> None:
        """Drop the expired tickets (a waiting server does this every second)."""

        def drop_expired(lock: Optional[TicketLock]) -> Tuple[Optional[TicketLock], bool, None]:
            if lock is None:
                return None, False, None
            lock.remove_expired_tickets()
            return lock, True, None

        self._change(conversation_id, drop_expired)

    def finish_serving(self, conversation_id: Text, ticket_number: int) -> None:
        def finish(lock: Optional[TicketLock]) -> Tuple[Optional[TicketLock], bool, None]:
            if lock is None:
                return None, False, None
            lock.remove_ticket_for(ticket_number)
            return lock, True, None

        self._change(conversation_id, finish)

    def cleanup(self, conversation_id: Text, ticket_number: int) -> None:
        """Finish ``ticket_number`` and delete the lock if no one else holds a ticket — in one
        transaction (Rasa checks and deletes in two steps, between which a new ticket can be lost)."""

        def finish_and_tidy(lock: Optional[TicketLock]) -> Tuple[Optional[TicketLock], bool, None]:
            if lock is None:
                return None, False, None
            lock.remove_ticket_for(ticket_number)
            return (lock if lock.is_someone_waiting() else None), True, None

        self._change(conversation_id, finish_and_tidy)
