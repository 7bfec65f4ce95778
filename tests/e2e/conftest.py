"""End-to-end fixtures: the real engine, action server and `rasa run`, on loopback ports, with a
fresh SQLite database shared by Rasa's tracker store and the engine (as in the default setup)."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from stack import Stack, http_json  # noqa: E402

from tests.services import free_port  # noqa: E402,F401  (the e2e modules take it from here)

MODEL = ROOT / "models" / "assistant.tar.gz"


class Assistant:
    """The running stack plus helpers to talk to it and read its database."""

    def __init__(self, workdir: Path, generator: Optional[str] = None) -> None:
        """``generator``: serve this generator instead of the project's default (engine.yml)."""
        self.workdir = workdir
        self.db = workdir / "assistant.db"
        # with a token, as `make serve` runs it (var/engine.token)
        self.token = f"e2e-{uuid.uuid4().hex}"
        self.stack = Stack(engine_port=free_port(), actions_port=free_port(), rasa_port=free_port(), logs=workdir / "logs",
                           token=self.token)
        self.engine_config = workdir / "engine.yml"
        self.endpoints = workdir / "endpoints.yml"
        self.engine_config.write_text(yaml.safe_dump({
            "server": {"port": self.stack.ports["engine"]},
            "state": {"database_url": f"sqlite:///{self.db}"},
            "domain": str(ROOT / "domain.yml"),
            "safety": {"responses": str(ROOT / "safety_responses.yml")},
            **({"generation": {"generator": generator}} if generator else {}),
        }))
        self.endpoints.write_text(yaml.safe_dump({
            "action_endpoint": {"url": f"http://127.0.0.1:{self.stack.ports['actions']}/webhook"},
            "nlg": {"type": "agent.nlg.EngineNaturalLanguageGenerator", "url": self.stack.engine_url("/nlg"), "timeout": 60},
            "tracker_store": {"type": "SQL", "dialect": "sqlite", "db": str(self.db)},
        }))

    # processes
    def start_engine(self) -> None:
        self.stack.start_engine(self.engine_config)
        self.stack.wait_ready("engine", self.stack.engine_url("/health"), timeout=600)

    def start_actions(self) -> None:
        self.stack.start_actions()
        self.stack.wait_ready("actions", f"http://127.0.0.1:{self.stack.ports['actions']}/health", timeout=120)

    def start_rasa(self, credentials: Optional[Path] = None) -> None:
        # the project's channels, as `make serve` opens them (the checked REST channel among them)
        self.stack.start_rasa(MODEL, self.endpoints, credentials or ROOT / "credentials.yml")
        self.stack.wait_ready("rasa", self.stack.rasa_api("/status"), timeout=300)

    # talking
    def say(self, sender: str, text: str) -> List[Dict[str, Any]]:
        status, replies = http_json(self.stack.rasa_url("/webhooks/rest/webhook"), {"sender": sender, "message": text}, timeout=180)
        assert status == 200, (status, replies)
        return replies

    def engine_get(self, path: str) -> tuple:
        """``(status, JSON)`` of a GET on the engine's API, with the stack's token."""
        return http_json(self.stack.engine_url(path), timeout=30, headers={"Authorization": f"Bearer {self.token}"})

    def tracker_events(self, sender: str) -> List[Dict[str, Any]]:
        status, tracker = http_json(self.stack.rasa_api(f"/conversations/{sender}/tracker"))
        assert status == 200
        return tracker["events"]

    def sql(self, query: str, *args) -> List[tuple]:
        with sqlite3.connect(self.db) as con:
            return con.execute(query, args).fetchall()

    def engine_turns(self, sender: str) -> List[tuple]:
        return self.sql(
            "select t.turn_index, t.user_text, t.emotion, t.crisis, r.response_name, r.text, r.generator "
            "from empathy_turns t join empathy_conversations c on c.id = t.conversation_id "
            "left join empathy_replies r on r.turn_id = t.id where c.sender_id = ? order by t.turn_index, r.id",
            sender,
        )


@contextlib.contextmanager
def running_assistant(workdir: Path, generator: Optional[str] = None):
    """The action server, the engine and ``rasa run`` started in ``workdir``; all stopped on exit."""
    if not MODEL.is_file():
        pytest.fail("models/assistant.tar.gz is missing: run `make setup` first")
    a = Assistant(workdir, generator=generator)
    try:
        a.start_actions()
        a.start_engine()
        a.start_rasa()
        yield a
    finally:
        a.stack.stop_all()


@pytest.fixture(scope="session")
def assistant(tmp_path_factory):
    with running_assistant(tmp_path_factory.mktemp("e2e")) as a:
        yield a


@pytest.fixture
def sender() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"
