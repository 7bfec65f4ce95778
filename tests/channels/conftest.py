"""Channel tests: real clients (python-socketio, Chromium through Playwright) against the real stack
(engine + action server + `rasa run` with the project's credentials.yml), as `make serve` starts it.

They run in their own environment (.venvs/channels, requirements/channels.txt) so that the test
clients change neither the Rasa nor the engine environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import MODEL, Assistant

ROOT = Path(__file__).resolve().parents[2]
# the project's channels; CHANNELS_TEST_CREDENTIALS points the tests at another file (e.g. Rasa's own
# `socketio:` channel, to see the tests fail on the enter_room bug)
CREDENTIALS = Path(os.environ.get("CHANNELS_TEST_CREDENTIALS", ROOT / "credentials.yml"))
NLG_TIMEOUT = 150  # seconds the agent waits for the engine before answering with the domain text
REPLY_TIMEOUT = NLG_TIMEOUT + 60  # seconds a client waits for a reply


def domain_texts(response: str) -> set:
    domain = yaml.safe_load((ROOT / "domain.yml").read_text())
    return {variant["text"] for variant in domain["responses"][response]}


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """The stack `make serve` runs, on free loopback ports, with its own SQLite database."""
    if not MODEL.is_file():
        pytest.fail("models/assistant.tar.gz is missing: run `make setup` first")
    a = Assistant(tmp_path_factory.mktemp("channels"))
    # a generated reply (not the domain fallback) even on a busy 2-core CI machine, where a first
    # turn has been seen to take over a minute; the clients wait up to REPLY_TIMEOUT for it
    endpoints = yaml.safe_load(a.endpoints.read_text())
    endpoints["nlg"]["timeout"] = NLG_TIMEOUT
    a.endpoints.write_text(yaml.safe_dump(endpoints))
    try:
        a.start_actions()
        a.start_engine()
        a.start_rasa(CREDENTIALS)
        yield a
    finally:
        a.stack.stop_all()
