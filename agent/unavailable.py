"""When a shared store cannot be reached: what the stores raise and what every channel says.

The Rasa servers keep a conversation in two shared stores: the SQL tracker store (its events) and,
with more than one server, the Redis lock store (one message of a conversation at a time). Both ride
out a short outage by waiting (agent/tracker_store.py, agent/lock_store.py). Past their wait a turn
cannot be handled without losing something — Rasa's own answer would be to start the conversation
over in memory and never write the turn to SQL — so the turn is *refused* instead, before anything of
it is kept:

* the stores raise :class:`StoreUnavailable` (the lock store also lets Rasa's ``LockError`` through,
  which says the same: the message was not handled);
* the channels answer with :data:`REPLY_UNAVAILABLE`, a message a person can act on (REST: HTTP 503
  with ``Retry-After``; socket.io and Slack: the same text as a bot message), and the client or the
  person sends the message again once the store is back. Nothing of the refused turn is in SQL, so
  the resent message is stored once.
"""

from __future__ import annotations

from typing import Optional

#: what a person reads when their message could not be kept
REPLY_UNAVAILABLE = ("I'm sorry, I'm having a technical problem on my side and couldn't keep that message. "
                     "Could you send it again in a minute?")
#: seconds a REST client is asked to wait before sending again (``Retry-After``)
RETRY_AFTER_S = 30


class StoreUnavailable(RuntimeError):
    """A shared store (``store``: "tracker store", "lock store") stayed unreachable for the whole
    retry window; the turn was not handled and nothing of it was kept."""

    def __init__(self, store: str, waited_s: float, cause: Optional[str] = None) -> None:
        detail = f" ({cause})" if cause else ""
        super().__init__(f"the {store} was unreachable for {waited_s:.1f} s{detail}; the turn was not handled")
        self.store = store
        self.waited_s = waited_s


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "this turn was not handled because a shared store is away" (answer with
    :data:`REPLY_UNAVAILABLE`) rather than a fault in handling it."""
    from rasa.core.lock_store import LockError  # Rasa's; raised when a lock could not be taken

    return isinstance(exc, (StoreUnavailable, LockError))
