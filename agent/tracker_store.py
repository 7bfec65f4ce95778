"""ReconnectingSQLTrackerStore: Rasa's SQL tracker store, made to ride out a database restart.

Configure in ``endpoints.yml`` (the keys of Rasa's ``type: SQL`` store, plus ``retry_seconds``)::

    tracker_store:
      type: agent.tracker_store.ReconnectingSQLTrackerStore
      dialect: postgresql
      url: 127.0.0.1
      port: 5432
      username: postgres
      db: assistant
      retry_seconds: 20    # how long a turn waits for the database to come back

Why: measured with Rasa 3.6.21 against PostgreSQL 15 (``tests/e2e/test_scale.py``), a restart of
the database cost messages with Rasa's own ``SQLTrackerStore``:

* Its SQLAlchemy engine is created without ``pool_pre_ping``, and Rasa offers no endpoints setting
  for it (only the ``SQL_POOL_SIZE``, ``SQL_MAX_OVERFLOW`` and ``POSTGRESQL_SCHEMA`` variables), so
  the first use of each pooled connection after a restart fails.
* Rasa wraps every tracker store in its ``FailSafeTrackerStore``: a failed ``retrieve`` returns
  ``None`` — Rasa then starts a *new* conversation session for that sender — and a failed ``save``
  goes to an in-memory store, so that turn's events never reach SQL. A database that is down for a
  second loses the turns that arrive in that second.

This store pings each connection before use and retries ``retrieve``/``save``/``keys`` while the
database is unreachable, for up to ``retry_seconds``, so a restart delays the turns in flight
instead of losing them. Retrying a save is safe: Rasa writes only the events the table does not
have yet (it counts them in the same transaction), and the lock store keeps other servers away from
the conversation meanwhile (keep ``retry_seconds`` well under the lock's lifetime, 60 s by
default). Event streaming to an event broker happens once per save, not once per attempt.

Past ``retry_seconds`` the turn is refused, not degraded: the store raises
:class:`agent.unavailable.StoreUnavailable`, which this module lets through Rasa's fail-safe wrapper
(see :func:`let_unavailable_through`), and the channels answer "send that again in a minute"
(agent/unavailable.py). Rasa's fail-safe would instead start the conversation over in memory (a
failed retrieve) or keep the turn in memory only (a failed save): the person gets a reply that
ignores everything said before, and the turn never reaches SQL. A refused turn leaves nothing in SQL:
the retrieve comes before anything else of the turn, and a save is one transaction.

While the database is known to be away (the last call ran out of retries and none has succeeded
since), a new call waits only ``away_retry_seconds`` (1 s by default), so that during a long outage
each message is refused at once instead of after the whole window; the first call that reaches the
database again ends that state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, Dict, Iterable, Optional, Text, TypeVar

import sqlalchemy as sa
from rasa.core.brokers.broker import EventBroker
from rasa.core.tracker_store import FailSafeTrackerStore, SQLTrackerStore, TrackerEventDiffEngine, create_engine_kwargs
from rasa.shared.core.domain import Domain
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.nlu.constants import INTENT_NAME_KEY
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from agent.unavailable import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_connection_error(exc: BaseException) -> bool:
    """An error that says the database could not be reached (or the connection broke), as opposed to
    one about the statement: only these are worth waiting for."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def describe(exc: BaseException) -> str:
    """The driver's own message, first line only: SQLAlchemy's text adds the statement and its
    parameters, which may hold what the user wrote (logs carry no conversation content)."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0]
    return f"{type(orig).__name__}: {first[:200]}"


class ReconnectingSQLTrackerStore(SQLTrackerStore):
    """Rasa's ``SQLTrackerStore`` with pre-ping and bounded retries while the database is away."""

    def __init__(
        self,
        domain: Optional[Domain] = None,
        dialect: Text = "sqlite",
        host: Optional[Text] = None,
        port: Optional[int] = None,
        db: Text = "rasa.db",
        username: Optional[Text] = None,
        password: Optional[Text] = None,
        event_broker: Optional[EventBroker] = None,
        login_db: Optional[Text] = None,
        query: Optional[Dict] = None,
        retry_seconds: float = 20.0,
        away_retry_seconds: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(domain, dialect, host, port, db, username, password, event_broker, login_db, query, **kwargs)
        self.retry_seconds = max(0.0, float(retry_seconds))
        self.away_retry_seconds = min(self.retry_seconds, max(0.0, float(away_retry_seconds)))
        # monotonic time at which a call last ran out of retries; None while the database answers
        self.away_since: Optional[float] = None
        # Rasa built its engine without pre-ping: build it again, same URL and pool settings, with it
        url = self.engine.url
        self.engine.dispose()
        self.engine = sa.create_engine(url, pool_pre_ping=True, **create_engine_kwargs(url))
        self.sessionmaker = sa.orm.session.sessionmaker(bind=self.engine)

    async def _with_retries(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        deadline = started + (self.away_retry_seconds if self.away_since is not None else self.retry_seconds)
        delay, attempts = 0.25, 0
        while True:
            try:
                result = await call()
            except Exception as exc:  # noqa: BLE001 - only connection errors are retried; the rest re-raised
                if not is_connection_error(exc):
                    raise
                if time.monotonic() >= deadline:
                    if self.away_since is None:
                        self.away_since = time.monotonic()
                    log.error("tracker store %s: the database stayed unavailable for %.1f s (%s); the turn is "
                              "refused", what, time.monotonic() - started, describe(exc))
                    raise StoreUnavailable("tracker store", time.monotonic() - started, describe(exc)) from exc
                attempts += 1
                delay = min(delay, max(0.05, deadline - time.monotonic()))  # the last try at the deadline
                log.warning("tracker store %s: the database is unavailable (%s); retry %d in %.2f s",
                            what, describe(exc), attempts, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if attempts or self.away_since is not None:
                log.info("tracker store %s: the database answered again after %d retries", what, attempts)
            self.away_since = None
            return result

    async def _retrieve(self, sender_id: Text, fetch_events_from_all_sessions: bool) -> Optional[DialogueStateTracker]:
        parent = super()._retrieve
        return await self._with_retries("retrieve", lambda: parent(sender_id, fetch_events_from_all_sessions))

    async def keys(self) -> Iterable[Text]:
        parent = super().keys
        return await self._with_retries("keys", parent)

    async def save(self, tracker: DialogueStateTracker) -> None:
        """Rasa's ``SQLTrackerStore.save``, with the database part retried; the events are streamed
        to the event broker once, after the write (Rasa streams them before it)."""
        # Rasa's stream_events, split in two: the difference is taken before the write (it compares
        # with what is stored), the events are published after it (a refused turn reaches no broker)
        new_events = None
        if self.event_broker is not None:
            old = await self.retrieve(tracker.sender_id)
            new_events = TrackerEventDiffEngine.event_difference(old, tracker)
        await self._with_retries("save", lambda: self._write_new_events(tracker))
        if new_events:
            await self._stream_new_events(self.event_broker, new_events, tracker.sender_id)

    async def _write_new_events(self, tracker: DialogueStateTracker) -> None:
        # the body of SQLTrackerStore.save (Rasa 3.6.21) after stream_events, unchanged
        with self.session_scope() as session:
            for event in self._additional_events(session, tracker):
                data = event.as_dict()
                intent = data.get("parse_data", {}).get("intent", {}).get(INTENT_NAME_KEY)
                session.add(
                    self.SQLEvent(
                        sender_id=tracker.sender_id,
                        type_name=event.type_name,
                        timestamp=data.get("timestamp"),
                        intent_name=intent,
                        action_name=data.get("name"),
                        data=json.dumps(data),
                    )
                )
            session.commit()
        log.debug("tracker %s stored to the database", tracker.sender_id)


def let_unavailable_through() -> None:
    """Make Rasa's ``FailSafeTrackerStore`` re-raise :class:`StoreUnavailable` instead of falling back
    to memory. Rasa wraps every tracker store in one (``Agent._create_tracker_store``) and offers no
    setting for it; both of its error hooks are methods called inside its ``except`` blocks, so
    raising there lets the error reach the channel, which refuses the turn (agent/unavailable.py).
    Any other error still takes Rasa's fallback, as before. Idempotent."""
    if getattr(FailSafeTrackerStore, "_lets_unavailable_through", False):
        return
    on_error, on_retrieve_error = FailSafeTrackerStore.on_tracker_store_error, FailSafeTrackerStore.on_tracker_store_retrieve_error

    def on_tracker_store_error(self: FailSafeTrackerStore, error: Exception) -> None:
        if isinstance(error, StoreUnavailable):
            raise error
        on_error(self, error)

    def on_tracker_store_retrieve_error(self: FailSafeTrackerStore, error: Exception) -> None:
        if isinstance(error, StoreUnavailable):
            raise error
        on_retrieve_error(self, error)

    FailSafeTrackerStore.on_tracker_store_error = on_tracker_store_error  # type: ignore[method-assign]
    FailSafeTrackerStore.on_tracker_store_retrieve_error = on_tracker_store_retrieve_error  # type: ignore[method-assign]
    FailSafeTrackerStore._lets_unavailable_through = True  # type: ignore[attr-defined]


# Rasa imports this module (by the class path in endpoints.yml) before it handles any message
let_unavailable_through()
