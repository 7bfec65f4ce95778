from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher

from actions.persona import ActionForgetPersona
from agent.engine_client import EngineClient, EngineUnavailable


class FakeEngine(BaseHTTPRequestHandler):
    calls: list = []
    status = 200

    def do_DELETE(self):  # noqa: N802 - http.server's naming
        FakeEngine.calls.append((self.path, self.headers.get("Authorization")))
        body = b'{"sender_id": "u 1/x", "deleted": 3}' if FakeEngine.status == 200 else b'{"error": "missing or wrong token"}'
        self.send_response(FakeEngine.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def engine_url():
    FakeEngine.calls, FakeEngine.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), FakeEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run(action, sender="u 1/x", text="please forget what I told you about me"):
    tracker = Tracker(sender, {"persona": "I am a nurse"}, {"intent": {"name": "forget_persona"}, "text": text}, [], False,
                      None, {}, "action_listen")
    dispatcher = CollectingDispatcher()
    events = asyncio.run(action.run(dispatcher, tracker, {}))
    return events, [m["response"] for m in dispatcher.messages]


def test_forget_calls_the_engine_with_the_token_and_confirms(engine_url):
    action = ActionForgetPersona(lambda: EngineClient(url=engine_url, token="tok", retries=0))
    assert action.name() == "action_forget_persona"
    events, said = run(action)
    assert FakeEngine.calls == [("/users/u%201%2Fx/persona", "Bearer tok")]  # the sender id is quoted
    assert said == ["utter_persona_forgotten"]
    assert events == [{"event": "slot", "timestamp": None, "name": "persona", "value": None}]


def test_engine_refusal_or_absence_is_said_not_hidden(engine_url):
    FakeEngine.status = 401
    events, said = run(ActionForgetPersona(lambda: EngineClient(url=engine_url, token="wrong", retries=0)))
    assert said == ["utter_persona_forget_failed"] and events == []
    events, said = run(ActionForgetPersona(lambda: EngineClient(url="http://127.0.0.1:9", retries=0, timeout_s=1)))
    assert said == ["utter_persona_forget_failed"] and events == []


def test_client_forget_persona_raises_on_refusal(engine_url):
    FakeEngine.status = 503
    with pytest.raises(EngineUnavailable, match="HTTP 503"):
        EngineClient(url=engine_url, retries=0).forget_persona("u1")


@pytest.mark.parametrize("text", [
    "forget what I told you", "actually could you forget all of that about me", "delete everything you know about me",
    "please forget everything", "can you erase everything you remember about me", "wipe what you know about me",
    "i changed my mind, forget what i said about myself", "don't remember anything about me", "erase my details please",
])
def test_a_request_to_forget_the_user_deletes(engine_url, text):
    events, said = run(ActionForgetPersona(lambda: EngineClient(url=engine_url, token="tok", retries=0)), text=text)
    assert said == ["utter_persona_forgotten"] and len(FakeEngine.calls) == 1


@pytest.mark.parametrize("text", [
    "I can't stop thinking about the argument, I wish I could forget it", "I just want to forget this whole week",
    "I'll never forget the day my son was born", "trying to forget about the breakup but it's hard",
    "my mum is starting to forget who we are",
])
def test_a_feeling_about_forgetting_deletes_nothing_and_gets_the_empathetic_reply(engine_url, text):
    events, said = run(ActionForgetPersona(lambda: EngineClient(url=engine_url, token="tok", retries=0)), text=text)
    assert said == ["utter_empathize"] and events == [] and FakeEngine.calls == []
