"""The socket.io channel, fixed for python-socketio 5.x, and the web chat page served beside it.

Referenced from ``credentials.yml`` by module path (``agent.socketio_channel.SocketIOInput``) in
place of Rasa's ``socketio`` block; it takes the same keys. Differences from Rasa 3.6.21's channel:

* ``session_request`` **awaits** ``AsyncServer.enter_room``. python-socketio 5.x made it a
  coroutine; Rasa's channel calls it without ``await`` under ``session_persistence: true``, so the
  client never joined its session room and every ``bot_uttered`` went to an empty room.
* An empty user message (what web-chat widgets send as their default ``initPayload``) starts the
  conversation with the ``/greet`` intent instead of reaching NLU as an empty text (which got the
  help text).
* After the ``bot_uttered`` events of a reply that carries the engine's details (``empathy`` in
  the bot event's metadata, see ``agent/nlg.py``) comes one ``bot_why`` event: the perceived
  emotions, polarity, cause utterances, CM plan, crisis flag, the response name and the generator,
  for the page's "why?" toggle. ``bot_uttered`` itself stays ``{"text": …}`` exactly as Rasa sends
  it: rasa-webchat renders a text message only when ``text`` is its only key.
* The web chat page (``web/``) is served at ``/chat/`` on Rasa's own port (same origin as
  ``/socket.io``), and ``GET /chat/history/<session_id>`` returns the texts of that session's
  current Rasa session, so the page shows the conversation again after a reload.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Text

from rasa.core.channels.channel import OutputChannel, UserMessage
from rasa.core.channels.socketio import SocketBlueprint, SocketIOOutput as RasaSocketIOOutput
from rasa.core.channels.socketio import SocketIOInput as RasaSocketIOInput
from sanic import Blueprint, Sanic, response
from sanic.request import Request
from sanic.response import HTTPResponse
from socketio import AsyncServer

from agent.rest_channel import MAX_CHARS, REPLY_FAILED, REPLY_NOT_TEXT, REPLY_TOO_LONG, strip_control
from agent.unavailable import REPLY_UNAVAILABLE, is_unavailable

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
GREETING_PAYLOAD = "/greet"
WHY_EVENT = "bot_why"
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_HISTORY_MESSAGES = 200


def why_from_metadata(empathy: Any) -> Optional[Dict[str, Any]]:
    """The part of the engine's details a person may see behind the page's "why?" toggle."""
    if not isinstance(empathy, dict):
        return None
    why: Dict[str, Any] = {
        "response": empathy.get("response"),
        "generator": empathy.get("generator"),
        "emotion": [e for e in (empathy.get("emotion") or []) if isinstance(e, dict)][:3],
        "polarity": empathy.get("polarity"),
        "causes": [c.get("text") for c in (empathy.get("causes") or []) if isinstance(c, dict) and c.get("text")][:3],
        "cm": [c for c in (empathy.get("cm") or []) if isinstance(c, str)],
        "crisis": bool(empathy.get("crisis")),
    }
    return why


class SocketIOOutput(RasaSocketIOOutput):
    """Rasa's socket.io output, plus a ``bot_why`` event after each reply with the engine's details."""

    @classmethod
    def name(cls) -> Text:
        return "socketio"

    async def send_text_message(self, recipient_id: Text, text: Text, **kwargs: Any) -> None:
        await super().send_text_message(recipient_id, text, **kwargs)
        why = why_from_metadata(kwargs.get("empathy"))
        if why is not None:
            if not why.get("response"):
                why["response"] = kwargs.get("utter_action")
            await self.sio.emit(WHY_EVENT, why, room=recipient_id)


class PageBlueprint(SocketBlueprint):
    """Attaches socket.io and the web chat page (``/chat/``) to Rasa's app."""

    def register(self, app: Sanic, options: Dict[Text, Any]) -> None:
        super().register(app, options)
        if WEB_DIR.is_dir():
            app.add_route(chat_page, "/chat/", methods=["GET"], name="webchat_page", strict_slashes=False)
            app.static("/chat/static", str(WEB_DIR / "static"), name="webchat_static")
            app.add_route(chat_history, "/chat/history/<session_id>", methods=["GET"], name="webchat_history")
        else:  # pragma: no cover - a broken checkout
            log.warning("web chat page not served: %s is missing", WEB_DIR)


async def chat_page(request: Request) -> HTTPResponse:
    if not request.path.endswith("/"):  # relative links of the page need the slash
        return response.redirect("/chat/")
    return await response.file(str(WEB_DIR / "index.html"), mime_type="text/html; charset=utf-8")


def history_from_events(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """User and bot texts of a session in order; the greeting payload and other intents hidden."""
    messages: List[Dict[str, Any]] = []
    for event in events:
        kind = event.get("event")
        text = event.get("text")
        if kind == "user" and text and not text.startswith("/"):
            messages.append({"role": "user", "text": text})
        elif kind == "bot" and text:
            why = why_from_metadata((event.get("metadata") or {}).get("empathy"))
            for part in (p for p in text.strip().split("\n\n") if p.strip()):
                messages.append({"role": "bot", "text": part})
            if why is not None and messages and messages[-1]["role"] == "bot":
                messages[-1]["why"] = why
    return messages[-MAX_HISTORY_MESSAGES:]


async def chat_history(request: Request, session_id: Text) -> HTTPResponse:
    if not SESSION_ID.match(session_id):
        return response.json({"error": "invalid session id"}, status=400)
    agent = getattr(request.app.ctx, "agent", None)
    if agent is None or not agent.is_ready():
        return response.json({"error": "the assistant is still starting"}, status=503)
    try:
        tracker = await agent.tracker_store.retrieve(session_id)
    except Exception as exc:  # the page only loses its history; the chat still works
        log.warning("could not read the history of %s (%s: %s)", session_id, type(exc).__name__, exc)
        return response.json({"error": "history unavailable"}, status=503)
    if tracker is None:
        return response.json({"session_id": session_id, "messages": []})
    events = [e.as_dict() for e in tracker.events]
    return response.json({"session_id": session_id, "messages": history_from_events(events)})


class SocketIOInput(RasaSocketIOInput):
    """Rasa's socket.io input channel with ``enter_room`` awaited (see the module docstring)."""

    @classmethod
    def name(cls) -> Text:
        return "socketio"

    def get_output_channel(self) -> Optional[OutputChannel]:
        if self.sio is None:
            return super().get_output_channel()
        return SocketIOOutput(self.sio, self.bot_message_evt)

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        sio = AsyncServer(async_mode="sanic", cors_allowed_origins=[])
        socketio_webhook = PageBlueprint(sio, self.socketio_path, "socketio_webhook", __name__)
        self.sio = sio

        @socketio_webhook.route("/", methods=["GET"])
        async def health(_: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @sio.on("connect", namespace=self.namespace)
        async def connect(sid: Text, environ: Dict, auth: Optional[Dict]) -> bool:
            if not self.jwt_key:
                return True
            from rasa.core.channels.channel import decode_bearer_token

            payload = decode_bearer_token(auth.get("token"), self.jwt_key, self.jwt_algorithm) if auth and auth.get("token") else None
            return bool(payload)

        @sio.on("session_request", namespace=self.namespace)
        async def session_request(sid: Text, data: Optional[Dict]) -> None:
            data = data if isinstance(data, dict) else {}
            if not data.get("session_id"):
                data["session_id"] = uuid.uuid4().hex
            if self.session_persistence:
                # the fix: a coroutine in python-socketio 5.x (Rasa 3.6.21 does not await it)
                await sio.enter_room(sid, data["session_id"], namespace=self.namespace)
            await sio.emit("session_confirm", data["session_id"], room=sid, namespace=self.namespace)

        @sio.on(self.user_message_evt, namespace=self.namespace)
        async def handle_message(sid: Text, data: Any) -> None:
            if not isinstance(data, dict):
                log.warning("ignoring a %s event that is not an object", self.user_message_evt)
                return
            output_channel = SocketIOOutput(sio, self.bot_message_evt)
            if self.session_persistence:
                if not data.get("session_id"):
                    log.warning("ignoring a message without a session_id (send session_request first)")
                    return
                sender_id = str(data["session_id"])
            else:
                sender_id = sid
            metadata = data.get(self.metadata_key) or {}
            if isinstance(metadata, str):
                try:
                    metadata = json.loads(metadata)
                except ValueError:
                    metadata = {}
            text = data.get("message")
            if text is not None and not isinstance(text, str):
                # the same checks as the REST channel (agent/rest_channel.py): a clear reply, nothing stored
                await output_channel.send_text_message(sender_id, REPLY_NOT_TEXT)
                return
            text = strip_control(text or "").strip()
            if len(text) > MAX_CHARS:
                await output_channel.send_text_message(sender_id, REPLY_TOO_LONG)
                return
            if not text:
                text = GREETING_PAYLOAD  # a widget's empty initPayload: open with a greeting
            message = UserMessage(text, output_channel, sender_id, input_channel=self.name(), metadata=metadata)
            try:
                await on_new_message(message)
            except Exception as exc:  # noqa: BLE001 - the person reads a clear reply, the log gets the rest
                if is_unavailable(exc):
                    log.error("socket.io: a message of %s was refused: %s", sender_id, exc)
                    await output_channel.send_text_message(sender_id, REPLY_UNAVAILABLE)
                else:
                    log.exception("socket.io: handling a message of %s failed", sender_id)
                    await output_channel.send_text_message(sender_id, REPLY_FAILED)

        return socketio_webhook
