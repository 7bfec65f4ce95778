#!/usr/bin/env python3
"""Start the whole assistant for real and stop what was started on exit.

    python scripts/stack.py chat     # the whole stack in the background, the conversation in this terminal
    python scripts/stack.py serve    # engine + action server + `rasa run` (web chat page, REST, socket.io, Slack)

The engine, the action server (and in ``chat`` mode ``rasa run``) run in the background with their
logs in ``logs/``, so the terminal shows only the conversation; the script
waits until the engine's ``/health`` says its models are loaded (showing progress), and stops
every process it started when the foreground one ends or on Ctrl-C. Ports and files can be changed
with the environment (ENGINE_PORT, ACTIONS_PORT, RASA_PORT, ENGINE_CONFIG, RASA_ENDPOINTS).
The end-to-end tests drive the same :class:`Stack`.

Secure by default: one token per install (``var/engine.token``, git-ignored, mode 600, made on
the first start; ``EMPATHY_NLG_TOKEN`` overrides it) guards the engine's routes (the agent's
components and the NLG endpoint send it) and Rasa's HTTP API (``--auth-token``: its
``/conversations`` and ``/model`` routes); the chat channels (web page, REST, socket.io, Slack)
stay open to users.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
RASA_BIN = ROOT / ".venvs" / "rasa" / "bin"
ENGINE_BIN = ROOT / ".venvs" / "engine" / "bin"
TOKEN_FILE = ROOT / "var" / "engine.token"


def install_token(path: Path = TOKEN_FILE) -> str:
    """``EMPATHY_NLG_TOKEN`` when set, else the install's token in ``path`` (made on first use:
    32 random bytes, URL-safe, readable by its owner only)."""
    given = os.environ.get("EMPATHY_NLG_TOKEN", "").strip()
    if given:
        return given
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
        path.unlink()  # an empty file (an interrupted first start): make a new token
        return install_token(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def http_json(url: str, body: Optional[dict] = None, timeout: float = 10.0, headers: Optional[Dict[str, str]] = None):
    """GET (or POST ``body``) and decode JSON; returns ``(status, data)``; (0, error) when unreachable."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        return 0, str(exc)


class Stack:
    def __init__(
        self,
        root: Path = ROOT,
        engine_port: int = 5056,
        actions_port: int = 5055,
        rasa_port: int = 5005,
        logs: Optional[Path] = None,
        env: Optional[Dict[str, str]] = None,
        token: Optional[str] = None,
    ) -> None:
        self.root = root
        self.token = token
        self.ports = {"engine": engine_port, "actions": actions_port, "rasa": rasa_port}
        self.logs = logs or root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "RASA_TELEMETRY_ENABLED": "false", "HF_HUB_OFFLINE": "1", **(env or {})}
        # Rasa 3.6 prints pages of third-party deprecation warnings at start; keep the shell readable.
        self.env.setdefault("PYTHONWARNINGS", "ignore")
        self.env.setdefault("EMPATHY_ENGINE_URL", f"http://127.0.0.1:{engine_port}")
        if token:
            self.env["EMPATHY_NLG_TOKEN"] = token  # the engine checks it; the agent's components send it
        self.procs: Dict[str, subprocess.Popen] = {}

    # -- processes ----------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: List[str], foreground: bool = False) -> subprocess.Popen:
        if foreground:
            proc = subprocess.Popen(cmd, cwd=self.root, env=self.env)
        else:
            log = open(self.logs / f"{name}.log", "ab")
            proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_engine(self, config: Optional[Path] = None) -> subprocess.Popen:
        cmd = [str(ENGINE_BIN / "empathy-nlg"), "serve", "--port", str(self.ports["engine"])]
        if config:
            cmd += ["--config", str(config)]
        return self._spawn("engine", cmd)

    def start_actions(self) -> subprocess.Popen:
        return self._spawn("actions", [str(RASA_BIN / "rasa"), "run", "actions", "--port", str(self.ports["actions"]), "--actions", "actions"])

    def start_rasa(self, model: Path, endpoints: Path, credentials: Optional[Path] = None, foreground: bool = False) -> subprocess.Popen:
        cmd = [str(RASA_BIN / "rasa"), "run", "--model", str(model), "--endpoints", str(endpoints),
               "--port", str(self.ports["rasa"]), "--enable-api", "--cors", "*"]
        if credentials:
            cmd += ["--credentials", str(credentials)]
        if self.token:
            cmd += ["--auth-token", self.token]
        return self._spawn("rasa", cmd, foreground=foreground)

    def stop(self, name: str, timeout: float = 20.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM) if proc.pid == os.getpgid(proc.pid) else proc.terminate()
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL) if proc.pid == os.getpgid(proc.pid) else proc.kill()
            except ProcessLookupError:
                pass
            proc.wait(5)

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)

    # -- readiness ----------------------------------------------------------------------------
    def wait_ready(self, name: str, url: str, timeout: float = 300.0, show: bool = False, ok=lambda status, data: status == 200) -> None:
        start = time.monotonic()
        last = ""
        while time.monotonic() - start < timeout:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see {self.logs / (name + '.log')}")
            status, data = http_json(url, timeout=5)
            if ok(status, data):
                if show:
                    print(f"\r  {name}: ready ({time.monotonic() - start:.0f} s)".ljust(70), flush=True)
                return
            if show:
                detail = data.get("detail") if isinstance(data, dict) else "starting"
                line = f"\r  {name}: {detail} … {time.monotonic() - start:.0f} s"
                if line != last:
                    print(line.ljust(70), end="", flush=True)
                    last = line
            time.sleep(1.0)
        raise TimeoutError(f"{name} not ready after {timeout:.0f} s; see {self.logs / (name + '.log')}")

    def engine_url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports['engine']}{path}"

    def rasa_url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports['rasa']}{path}"

    def rasa_api(self, path: str) -> str:
        """A URL of Rasa's HTTP API (``/conversations/…``, ``/model/…``), with the token it asks for."""
        if not self.token:
            return self.rasa_url(path)
        return self.rasa_url(path) + ("&" if "?" in path else "?") + urllib.parse.urlencode({"token": self.token})

    def engine_headers(self) -> Dict[str, str]:
        """What a client of the engine's routes (all but ``/health``) sends."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def warm_up(self) -> None:
        """One message through NLU (and so the engine's perception) before the first prompt, so that
        the first turn is not the one paying for TensorFlow's and torch's first calls. Nothing is
        stored: /model/parse has no conversation."""
        for _ in range(2):
            http_json(self.rasa_api("/model/parse"), {"text": "I had a long day at work today"}, timeout=120)

    def start_backend(self, engine_config: Optional[Path] = None, show: bool = False) -> None:
        """Engine + action server, waiting until both answer."""
        self.start_engine(engine_config)
        self.start_actions()
        self.wait_ready("actions", f"http://127.0.0.1:{self.ports['actions']}/health", show=show, timeout=120)
        self.wait_ready("engine", self.engine_url("/health"), show=show, timeout=600)


def chat(stack: Stack) -> int:
    """A conversation in the terminal over Rasa's REST channel; /stop (or Ctrl-D) ends it."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    sender = f"shell-{uuid.uuid4().hex[:12]}"
    url = stack.rasa_url("/webhooks/rest/webhook")

    def say(text: str) -> bool:
        status, replies = http_json(url, {"sender": sender, "message": text}, timeout=300)
        if status != 200 or not isinstance(replies, list):
            print("(the assistant could not answer just now; details in logs/rasa.log)", flush=True)
            return False
        for reply in replies:
            if reply.get("text"):
                print(f"Assistant: {reply['text']}", flush=True)
        return True

    print(f"\nType a message and press Enter; /stop ends the conversation. "
          f"(The web chat page is at http://localhost:{stack.ports['rasa']}/chat/ meanwhile.)\n", flush=True)
    say("/greet")
    print(flush=True)
    while True:
        try:
            text = input("You: ").strip()
        except EOFError:  # Ctrl-D
            break
        if not text:
            continue
        if text in ("/stop", "/quit", "/exit"):
            break
        say(text)
        print(flush=True)
    return 0


def main(argv: List[str]) -> int:
    mode = argv[1] if len(argv) > 1 else "chat"
    if mode not in ("chat", "serve"):
        print("usage: stack.py chat|serve", file=sys.stderr)
        return 2
    env = os.environ
    stack = Stack(
        engine_port=int(env.get("ENGINE_PORT", 5056)),
        actions_port=int(env.get("ACTIONS_PORT", 5055)),
        rasa_port=int(env.get("RASA_PORT", 5005)),
        token=install_token(),
    )
    engine_config = Path(env.get("ENGINE_CONFIG", ROOT / "engine.yml"))
    endpoints = Path(env.get("RASA_ENDPOINTS", ROOT / "endpoints.yml"))
    model = ROOT / "models" / "assistant.tar.gz"
    started = time.monotonic()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)  # the terminal was closed: stop everything all the same
    code = 0
    try:
        print("starting the empathy engine and the action server (logs in logs/)…", flush=True)
        stack.start_backend(engine_config, show=True)
        health = http_json(stack.engine_url("/health"))[1]
        models = health.get("models", {}) if isinstance(health, dict) else {}
        print(f"engine ready: generator {models.get('generator_version')}, perception {models.get('perception')}", flush=True)
        if mode == "chat":
            # `rasa run` in the background (its logs in logs/rasa.log), warmed, then the conversation
            # in this terminal: the screen shows the conversation and nothing else.
            stack.start_rasa(model, endpoints, ROOT / "credentials.yml")
            stack.wait_ready("rasa", stack.rasa_api("/status"), show=True, timeout=600)
            stack.warm_up()
            code = chat(stack)
        else:
            print(f"serving: web chat http://localhost:{stack.ports['rasa']}/chat/ , "
                  f"REST http://127.0.0.1:{stack.ports['rasa']}/webhooks/rest/webhook, "
                  f"socket.io on the same port; engine http://127.0.0.1:{stack.ports['engine']} (Ctrl-C stops all)", flush=True)
            code = stack.start_rasa(model, endpoints, ROOT / "credentials.yml", foreground=True).wait()
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        stack.stop_all()
        print(f"stopped everything this session started ({time.monotonic() - started:.0f} s). Logs: {stack.logs}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
