"""The REST channel, with its input checked before Rasa sees it.

Referenced from ``credentials.yml`` as ``agent.rest_channel.CheckedRestInput`` in place of Rasa's
``rest`` block; same URL (``/webhooks/rest/webhook``), same body (``{"sender", "message",
"metadata"}``), same reply (a JSON list of ``{"recipient_id", "text", …}``). What Rasa 3.6.21's
channel did with bad input (issue #15): a JSON list as the body → a 500; a number as ``message`` →
``[]``; a 120 KB message → 44–53 s of NLU and then ``[]``. Here every bad request is answered at
once with HTTP 400 (413 when too long) and a list holding one message a person can read, with
``error`` naming the field; nothing reaches the tracker or SQL:

* the body must be a JSON object; ``message`` a string with something in it, at most
  :data:`MAX_CHARS` characters; ``sender`` (optional) a string of at most 255 characters;
  ``metadata`` (optional) an object;
* control characters (NUL and the like, but not newlines and tabs) are removed from the message.

A message that could not be handled because a shared store was away (agent/unavailable.py) is
answered with HTTP 503, ``Retry-After`` and a list holding one message that asks the person to send it
again; nothing of it was kept, so sending it again stores it once.
"""

from __future__ import annotations

import json
import logging
import re
from asyncio import CancelledError
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from rasa.core.channels.channel import CollectingOutputChannel, UserMessage
from rasa.core.channels.rest import RestInput
from rasa.utils.endpoints import bool_arg
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from agent.unavailable import REPLY_UNAVAILABLE, RETRY_AFTER_S, is_unavailable

log = logging.getLogger(__name__)

#: the longest message Rasa is given (a long story fits; a pasted document does not)
MAX_CHARS = 4000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

REPLY_NOT_TEXT = "Sorry, I couldn't read that. Could you send me your message as plain text?"
REPLY_EMPTY = "I didn't catch anything there. What would you like to tell me?"
REPLY_FAILED = "Sorry, something went wrong on my side. Could you say that again?"
REPLY_TOO_LONG = ("That's a lot to take in at once, and I want to read it properly. "
                  "Could you send it to me in a few shorter messages?")


class BadInput(ValueError):
    def __init__(self, status: int, field: str, problem: str, reply: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.status, self.field, self.reply = status, field, reply


def strip_control(text: str) -> str:
    """``text`` without control characters (newlines and tabs stay)."""
    return _CONTROL.sub("", text)


def parse_body(raw: bytes) -> Tuple[str, Optional[str], Optional[Dict[str, Any]]]:
    """``(message, sender, metadata)`` of a REST request body, or :class:`BadInput`."""
    try:
        body = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInput(400, "body", "not a JSON document in UTF-8", REPLY_NOT_TEXT) from None
    if not isinstance(body, dict):
        raise BadInput(400, "body", f"must be a JSON object, not {type(body).__name__}", REPLY_NOT_TEXT)
    sender = body.get("sender")
    if sender is not None and (not isinstance(sender, str) or not sender.strip() or len(sender) > 255):
        raise BadInput(400, "sender", "must be a non-empty string of at most 255 characters", REPLY_NOT_TEXT)
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadInput(400, "metadata", f"must be an object, not {type(metadata).__name__}", REPLY_NOT_TEXT)
    message = body.get("message")
    if not isinstance(message, str):
        problem = "is missing" if message is None else f"must be a string, not {type(message).__name__}"
        raise BadInput(400, "message", problem, REPLY_NOT_TEXT)
    message = strip_control(message)
    if not message.strip():
        raise BadInput(400, "message", "is empty", REPLY_EMPTY)
    if len(message) > MAX_CHARS:
        raise BadInput(413, "message", f"is {len(message)} characters; the limit is {MAX_CHARS}", REPLY_TOO_LONG)
    return message, sender, metadata


def bad_input_reply(exc: BadInput, sender: Optional[str] = None) -> HTTPResponse:
    return response.json([{"recipient_id": sender, "text": exc.reply, "error": str(exc)}], status=exc.status)


def failed_turn_reply(exc: Exception, sender: Optional[str], collected: List[Dict[str, Any]]) -> Optional[HTTPResponse]:
    """The answer to a turn whose handling raised ``exc``; ``None``: send what was ``collected``.

    * a shared store was away (agent/unavailable.py): 503, ``Retry-After`` and the text asking to send
      the message again — even when a reply was collected, because the turn was not kept;
    * anything else: the replies collected before the fault, if any; else 500 and a plain apology."""
    if is_unavailable(exc):
        log.error("rest: a message of %s was refused: %s", sender, exc)
        return response.json([{"recipient_id": sender, "text": REPLY_UNAVAILABLE, "error": "unavailable"}],
                             status=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    log.error("rest: handling a message of %s failed", sender, exc_info=exc)
    if collected:
        return None
    return response.json([{"recipient_id": sender, "text": REPLY_FAILED, "error": "internal error"}], status=500)


class CheckedRestInput(RestInput):
    """Rasa's REST channel with the input checks above (module doc)."""

    @classmethod
    def name(cls) -> str:
        return "rest"

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        hook = Blueprint(f"custom_webhook_{type(self).__name__}", __name__)

        @hook.route("/", methods=["GET"])
        async def health(_request: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @hook.route("/webhook", methods=["POST"])
        async def receive(request: Request) -> HTTPResponse:
            try:
                text, sender, metadata = parse_body(request.body)
            except BadInput as exc:
                log.info("rest: rejected a request (%s)", exc)
                return bad_input_reply(exc)
            if bool_arg(request, "stream", default=False):
                return response.stream(self.stream_response(on_new_message, text, sender, self.name(), metadata),
                                       content_type="text/event-stream")
            collector = CollectingOutputChannel()
            try:
                await on_new_message(UserMessage(text, collector, sender, input_channel=self.name(), metadata=metadata))
            except CancelledError:
                log.error("rest: message processing timed out for %s", sender)
            except Exception as exc:  # noqa: BLE001 - the person gets a clear reply, the log gets the traceback
                failed = failed_turn_reply(exc, sender, collector.messages)
                if failed is not None:
                    return failed
            messages: List[Dict[str, Any]] = collector.messages
            return response.json(messages)

        return hook
