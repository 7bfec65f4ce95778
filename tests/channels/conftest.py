"""Channel tests: real clients (python-socketio, Chromium through Playwright) against the real stack
(engine + action server + `rasa run` with the project's credentials.yml), as `make serve` starts it.

They run in their own environment (.venvs/channels, requirements/channels.txt) so that the test
clients change neither the Rasa nor the engine environment.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from playwright.sync_api import sync_playwright

from tests.e2e.conftest import MODEL, Assistant

ROOT = Path(__file__).resolve().parents[2]
# the project's channels; CHANNELS_TEST_CREDENTIALS points the tests at another file (e.g. Rasa's own
# `socketio:` channel, to see the tests fail on the enter_room bug)
CREDENTIALS = Path(os.environ.get("CHANNELS_TEST_CREDENTIALS", ROOT / "credentials.yml"))
NLG_TIMEOUT = 150  # seconds the agent waits for the engine before answering with the domain text
REPLY_TIMEOUT = NLG_TIMEOUT + 60  # seconds a client waits for a reply
REPLY_MS = REPLY_TIMEOUT * 1000
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "results" / "screenshots"  # test artefacts


def domain_texts(response: str) -> set:
    domain = yaml.safe_load((ROOT / "domain.yml").read_text())
    return {variant["text"] for variant in domain["responses"][response]}


SLACK_TOKEN = "xoxb-test-token"
SLACK_SIGNING_SECRET = "test-signing-secret"


class FakeSlackAPI:
    """A local stand-in for the Slack Web API on loopback: records every call, answers ok."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"raw": raw.decode(errors="replace")}
                with api.lock:
                    api.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                answer = json.dumps({"ok": True, "channel": body.get("channel"), "ts": "1700000000.000100"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def posted(self, channel: str) -> List[Dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c["path"].endswith("/chat.postMessage") and c["body"].get("channel") == channel]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def slack_api():
    api = FakeSlackAPI()
    yield api
    api.close()


@pytest.fixture(scope="session")
def served(tmp_path_factory, slack_api):
    """The stack `make serve` runs, on free loopback ports, with its own SQLite database."""
    if not MODEL.is_file():
        pytest.fail("models/assistant.tar.gz is missing: run `make setup` first")
    a = Assistant(tmp_path_factory.mktemp("channels"))
    # a generated reply (not the domain fallback) even on a busy 2-core CI machine, where a first
    # turn has been seen to take over a minute; the clients wait up to REPLY_TIMEOUT for it
    endpoints = yaml.safe_load(a.endpoints.read_text())
    endpoints["nlg"]["timeout"] = NLG_TIMEOUT
    a.endpoints.write_text(yaml.safe_dump(endpoints))
    # Slack is configured from the environment, as a deployment does; its Web API is the fake one
    a.stack.env.update({"SLACK_TOKEN": SLACK_TOKEN, "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
                        "SLACK_API_URL": slack_api.url})
    try:
        a.start_actions()
        a.start_engine()
        a.start_rasa(CREDENTIALS)
        yield a
    finally:
        a.stack.stop_all()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (which never downloads a browser of its own here)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup_test_clients.sh installs Debian's chromium")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()
