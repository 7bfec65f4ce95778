"""`make chat` as a person uses it, in a real terminal (tmux): the screen shows the conversation and
nothing else, the greeting comes first, an emotional message gets a generated reply (once), and
/stop ends everything that was started. Runs `scripts/stack.py chat` (what `make chat` runs after
the setup) on free ports with its own database."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest
import yaml

from tests.channels.conftest import NLG_TIMEOUT, REPLY_TIMEOUT, ROOT, domain_texts
from tests.e2e.conftest import MODEL, Assistant

NOISE = re.compile(r"WARNING|ERROR|Traceback|DeprecationWarning|UserWarning|INFO|sanic|tensorflow", re.IGNORECASE)


class Terminal:
    def __init__(self, command: str, env: dict) -> None:
        self.name = f"chat-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "160", "-y", "200",
                        f"cd {ROOT} && env {exports} {command}; echo STACK-EXIT $?; sleep 600"], check=True)

    def screen(self) -> str:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-", "-t", self.name], capture_output=True, text=True)
        return out.stdout

    def type(self, text: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", text], check=True)
        subprocess.run(["tmux", "send-keys", "-t", self.name, "Enter"], check=True)

    def wait_for(self, condition, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if condition(screen):
                return screen
            if "STACK-EXIT" in screen and "STACK-EXIT" not in what:
                break
            time.sleep(1)
        pytest.fail(f"waited for {what}; the screen shows:\n{self.screen()}")

    def close(self) -> None:
        if "STACK-EXIT" not in self.screen():  # a test failed half-way: Ctrl-C, as a person would
            subprocess.run(["tmux", "send-keys", "-t", self.name, "C-c"], capture_output=True)
            deadline = time.monotonic() + 60
            while "STACK-EXIT" not in self.screen() and time.monotonic() < deadline:
                time.sleep(1)
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def stack_processes(a: Assistant) -> list:
    """Pids of this chat's engine, action server and Rasa (matched by their own config files/port)."""
    patterns = [f"empathy-nlg serve .*--config {a.engine_config}", f"rasa run --model .*--endpoints {a.endpoints}",
                f"rasa run actions --port {a.stack.ports['actions']}"]
    pids = []
    for pattern in patterns:
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        pids += [int(p) for p in out]
    return pids


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def assistant_lines(screen: str) -> list:
    return [line[len("Assistant: "):] for line in screen.splitlines() if line.startswith("Assistant: ")]


@pytest.fixture
def chat_terminal(tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: scripts/setup_test_clients.sh installs it")
    if not MODEL.is_file():
        pytest.fail("models/assistant.tar.gz is missing: run `make setup` first")
    a = Assistant(tmp_path)  # writes engine.yml / endpoints.yml for free ports and a fresh database
    endpoints = yaml.safe_load(a.endpoints.read_text())
    endpoints["nlg"]["timeout"] = NLG_TIMEOUT
    a.endpoints.write_text(yaml.safe_dump(endpoints))
    ports = a.stack.ports
    env = {"ENGINE_PORT": ports["engine"], "ACTIONS_PORT": ports["actions"], "RASA_PORT": ports["rasa"],
           "ENGINE_CONFIG": a.engine_config, "RASA_ENDPOINTS": a.endpoints}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    term = Terminal(".venvs/engine/bin/python scripts/stack.py chat", env)
    try:
        yield term, a
    finally:
        term.close()
        for pid in stack_processes(a):  # only if the test failed half-way
            os.kill(pid, signal.SIGTERM)


def test_make_chat_shows_only_the_conversation_and_stop_ends_everything(chat_terminal):
    term, a = chat_terminal
    screen = term.wait_for(lambda s: re.search(r"^You: $", s, re.M), 900, "the first prompt")
    greeting = assistant_lines(screen)
    assert len(greeting) == 1 and greeting[0] in domain_texts("utter_greet"), screen
    noisy = [line for line in screen.splitlines() if NOISE.search(line)]
    assert not noisy, f"log lines on the chat screen: {noisy}"
    assert len([line for line in screen.splitlines() if line.strip()]) <= 12, screen
    assert len(stack_processes(a)) == 3  # engine, action server, Rasa: what /stop must end

    term.type("I failed my driving test again and I feel like such a failure")
    screen = term.wait_for(lambda s: len(assistant_lines(s)) >= 2 and re.search(r"^You: $", s, re.M), REPLY_TIMEOUT,
                           "a reply to the emotional message")
    reply = assistant_lines(screen)[1]
    assert reply.strip()
    assert reply not in domain_texts("utter_empathize"), "the domain fallback answered, not the generator"
    assert screen.count(reply) == 1, "the reply is on the screen more than once"
    assert not [line for line in screen.splitlines() if NOISE.search(line)]

    term.type("/stop")
    screen = term.wait_for(lambda s: "STACK-EXIT" in s, 120, "STACK-EXIT after /stop")
    assert "STACK-EXIT 0" in screen and "stopped everything this session started" in screen
    assert stack_processes(a) == [], "processes of the chat are still running after /stop"
    for name, port in a.stack.ports.items():
        assert not listening(port), f"{name} still listens on {port} after /stop"
