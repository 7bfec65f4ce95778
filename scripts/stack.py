#!/usr/bin/env python3
"""Start the whole assistant for real and stop what was started on exit.

    python scripts/stack.py chat          # the whole stack in the background, the conversation in this terminal
    python scripts/stack.py serve         # engine + action server + `rasa run` (web chat page, REST, socket.io, Slack)
    python scripts/stack.py serve-scaled  # two `rasa run` behind a round-robin proxy, two engines, PostgreSQL + Redis

The engine, the action server (and in ``chat`` mode ``rasa run``) run in the background with their
logs in ``logs/``, so the terminal shows only the conversation; the script
waits until the engine's ``/health`` says its models are loaded (showing progress), and stops
every process it started when the foreground one ends or on Ctrl-C. Ports and files can be changed
with the environment (ENGINE_PORT, ACTIONS_PORT, RASA_PORT, ENGINE_CONFIG, RASA_ENDPOINTS).
The end-to-end tests drive the same :class:`Stack` (and :class:`ScaledStack`).

``serve-scaled`` is the scaled-out shape of docs/deployment.md on one machine: two Rasa servers
behind ``scripts/rrproxy.py`` (round robin) sharing a PostgreSQL tracker store and a Redis lock
store, each pinned to its own engine, the engines sharing the same PostgreSQL database; ports
SCALED_PORT (proxy, 5205) and the five after it, SCALED_DATABASE_URL (created when missing),
SCALED_REDIS_URL.

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
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

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
    while token.startswith("-"):  # never an option-looking token, for any tool it is passed to
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
    def _spawn(self, name: str, cmd: List[str], foreground: bool = False, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        """Start ``cmd`` as ``name`` (its output in ``logs/<name>.log``); ``env`` adds to the stack's
        environment for this process only (the scaled stack pins each Rasa server to its engine)."""
        env = {**self.env, **(env or {})}
        if foreground:
            proc = subprocess.Popen(cmd, cwd=self.root, env=env)
        else:
            log = open(self.logs / f"{name}.log", "ab")
            proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_engine(self, config: Optional[Path] = None, name: str = "engine", port: Optional[int] = None,
                     env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        cmd = [str(ENGINE_BIN / "empathy-nlg"), "serve", "--port", str(port or self.ports["engine"])]
        if config:
            cmd += ["--config", str(config)]
        return self._spawn(name, cmd, env=env)

    def start_actions(self) -> subprocess.Popen:
        return self._spawn("actions", [str(RASA_BIN / "rasa"), "run", "actions", "--port", str(self.ports["actions"]), "--actions", "actions"])

    def start_rasa(self, model: Path, endpoints: Path, credentials: Optional[Path] = None, foreground: bool = False,
                   name: str = "rasa", port: Optional[int] = None, env: Optional[Dict[str, str]] = None,
                   interface: Optional[str] = None) -> subprocess.Popen:
        cmd = [str(RASA_BIN / "rasa"), "run", "--model", str(model), "--endpoints", str(endpoints),
               "--port", str(port or self.ports["rasa"]), "--enable-api", "--cors", "*"]
        if interface:
            cmd += ["--interface", interface]
        if credentials:
            cmd += ["--credentials", str(credentials)]
        if self.token:
            # one argument: a token may begin with "-" (token_urlsafe's alphabet), which argparse
            # would take for an option ("--auth-token: expected one argument"; Rasa exits with 2)
            cmd += [f"--auth-token={self.token}"]
        return self._spawn(name, cmd, foreground=foreground, env=env)

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


DEFAULT_SCALED_DATABASE = "postgresql://postgres@127.0.0.1:5432/empathy_scaled"
DEFAULT_SCALED_REDIS = "redis://127.0.0.1:6379/1"


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database of ``url`` when it does not exist yet: Rasa's tracker store
    creates its table but not its database, and the engines migrate their schema at start."""
    import psycopg  # the engine's driver: this script runs under the engine's interpreter
    from psycopg import sql

    parts = urllib.parse.urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise RuntimeError(f"the scaled stack needs PostgreSQL, not {parts.scheme!r} (SCALED_DATABASE_URL)")
    name = parts.path.lstrip("/")
    admin = parts._replace(scheme="postgresql", path="/postgres").geturl()
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as con:
            if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.DuplicateDatabase:
        pass  # created meanwhile by another start
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RuntimeError(f"PostgreSQL at {parts.hostname}:{parts.port or 5432} could not provide database "
                           f"{name!r}: {first}") from None


def redis_ping(url: str) -> None:
    """Check that Redis answers before any Rasa server depends on it for its lock store."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=3) as con:
            if parts.password:
                con.sendall(f"AUTH {parts.password}\r\n".encode())
                con.recv(128)
            con.sendall(b"PING\r\n")
            reply = con.recv(128)
    except OSError as exc:
        raise RuntimeError(f"Redis at {host}:{port} is not reachable ({exc}); the Rasa servers need it for "
                           f"their lock store (SCALED_REDIS_URL)") from None
    if not reply.startswith(b"+PONG"):
        raise RuntimeError(f"Redis at {host}:{port} did not answer PING: {reply[:80]!r}")


class ScaledStack(Stack):
    """The scaled-out assistant on one machine, started for real (docs/deployment.md).

    * ``rasa-1``, ``rasa-2``: ``rasa run`` servers behind ``proxy`` (scripts/rrproxy.py, round
      robin), so consecutive turns of one conversation land on different servers. They share the
      PostgreSQL tracker store (``agent.tracker_store.ReconnectingSQLTrackerStore``: Rasa's SQL
      store that waits out a database restart) and a Redis lock store — Rasa's requirement for more
      than one server: the lock serialises a conversation's messages across servers. It is
      ``agent.lock_store.AtomicRedisLockStore``, Rasa's Redis lock store with atomic ticket changes:
      with Rasa's own, two servers taking one conversation's messages at the same moment can both
      hold its lock.
    * ``engine-1``, ``engine-2``: one engine per Rasa server (its NLU components and NLG endpoint
      call that engine only). Pinned rather than balanced, so each engine's load and failures stay
      attributable here; the engines keep no conversation in memory, so a conversation moving
      between servers moves between engines, and their state lives in the same PostgreSQL database.
    * ``actions``: one action server for both (stateless), its engine calls to ``engine-1``.
    """

    def __init__(
        self,
        root: Path = ROOT,
        proxy_port: int = 5205,
        rasa_ports: Sequence[int] = (5206, 5207),
        engine_ports: Sequence[int] = (5208, 5209),
        actions_port: int = 5210,
        database_url: str = DEFAULT_SCALED_DATABASE,
        redis_url: str = DEFAULT_SCALED_REDIS,
        lock_prefix: str = "empathyscaled",
        logs: Optional[Path] = None,
        workdir: Optional[Path] = None,
        env: Optional[Dict[str, str]] = None,
        token: Optional[str] = None,
        engine_config: Optional[Path] = None,
        model: Optional[Path] = None,
        credentials: Optional[Path] = None,
        tracker_retry_s: float = 20.0,
        lock_retry_s: float = 10.0,
        tracker_store_type: str = "agent.tracker_store.ReconnectingSQLTrackerStore",
        lock_store_type: str = "agent.lock_store.AtomicRedisLockStore",
    ) -> None:
        if len(rasa_ports) != len(engine_ports) or not rasa_ports:
            raise ValueError("one engine port per Rasa port, at least one of each")
        if not lock_prefix.isalnum():
            raise ValueError(f"the lock store's key prefix must be alphanumeric (Rasa's rule), not {lock_prefix!r}")
        super().__init__(root, engine_port=engine_ports[0], actions_port=actions_port, rasa_port=proxy_port,
                         logs=logs, env=env, token=token)
        self.ports["proxy"] = proxy_port
        # (name suffix, Rasa port, engine port): replica i is rasa-i pinned to engine-i
        self.replicas: List[Tuple[int, int, int]] = [(i, r, e) for i, (r, e) in enumerate(zip(rasa_ports, engine_ports), 1)]
        self.database_url = database_url
        self.redis_url = redis_url
        self.lock_prefix = lock_prefix
        self.workdir = workdir or root / "var" / "scaled"
        self.engine_config = engine_config or root / "engine.yml"
        self.model = model or root / "models" / "assistant.tar.gz"
        self.credentials = credentials or root / "credentials.yml"
        self.tracker_retry_s = tracker_retry_s
        self.lock_retry_s = lock_retry_s
        # Rasa's own "SQL" store too, to compare: it loses turns across a database restart (agent/tracker_store.py)
        self.tracker_store_type = tracker_store_type
        # and Rasa's own "redis" lock store: two servers can both take one conversation's lock (agent/lock_store.py)
        self.lock_store_type = lock_store_type

    # -- configuration --------------------------------------------------------------------------
    def server_url(self, index: int, path: str = "") -> str:
        """A URL of Rasa server ``index`` (1-based) itself, not through the proxy."""
        return f"http://127.0.0.1:{self.replicas[index - 1][1]}{path}"

    def server_api(self, index: int, path: str) -> str:
        url = self.server_url(index, path)
        return url if not self.token else url + ("&" if "?" in path else "?") + urllib.parse.urlencode({"token": self.token})

    def engine_url_of(self, index: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.replicas[index - 1][2]}{path}"

    def endpoints_config(self, index: int) -> Dict[str, object]:
        """``endpoints.yml`` of Rasa server ``index``: its own engine, the shared stores."""
        db = urllib.parse.urlsplit(self.database_url)
        tracker: Dict[str, object] = {
            "type": self.tracker_store_type, "dialect": "postgresql",
            "url": db.hostname or "127.0.0.1", "port": db.port or 5432, "username": db.username or "postgres",
            "db": db.path.lstrip("/"),
        }
        if self.tracker_store_type.endswith("ReconnectingSQLTrackerStore"):
            tracker["retry_seconds"] = self.tracker_retry_s
        if db.password:
            tracker["password"] = urllib.parse.unquote(db.password)
        redis = urllib.parse.urlsplit(self.redis_url)
        lock: Dict[str, object] = {"type": self.lock_store_type, "url": redis.hostname or "127.0.0.1", "port": redis.port or 6379,
                                   "db": int(redis.path.lstrip("/") or 1), "key_prefix": self.lock_prefix}
        if self.lock_store_type.endswith("AtomicRedisLockStore"):
            lock["retry_seconds"] = self.lock_retry_s
        if redis.password:
            lock["password"] = urllib.parse.unquote(redis.password)
        return {
            "action_endpoint": {"url": f"http://127.0.0.1:{self.ports['actions']}/webhook"},
            "nlg": {"type": "agent.nlg.EngineNaturalLanguageGenerator", "url": self.engine_url_of(index, "/nlg"), "timeout": 30},
            "tracker_store": tracker,
            "lock_store": lock,
        }

    def write_endpoints(self) -> List[Path]:
        import yaml  # in both environments; only the stack's own modes need it

        self.workdir.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, _rasa, _engine in self.replicas:
            path = self.workdir / f"endpoints-rasa-{index}.yml"
            path.write_text("# written by scripts/stack.py (ScaledStack) at each start\n"
                            + yaml.safe_dump(self.endpoints_config(index), sort_keys=False), encoding="utf-8")
            paths.append(path)
        return paths

    # -- processes ------------------------------------------------------------------------------
    def start(self, show: bool = False) -> None:
        """Everything, in the background, waiting until each part answers. The engines and the
        Rasa servers load at the same time (minutes on two cores)."""
        redis_ping(self.redis_url)
        ensure_database(self.database_url)
        self.write_endpoints()
        self.start_actions()
        for index, _rasa, engine_port in self.replicas:
            self.start_engine(self.engine_config, name=f"engine-{index}", port=engine_port,
                              env={"DATABASE_URL": self.database_url})
        for index, _rasa, _engine in self.replicas:
            self.start_server(index, wait=False)
        self.start_proxy()
        self.wait_ready("actions", f"http://127.0.0.1:{self.ports['actions']}/health", show=show, timeout=120)
        for index, _rasa, _engine in self.replicas:
            self.wait_ready(f"engine-{index}", self.engine_url_of(index, "/health"), show=show, timeout=900)
        for index, _rasa, _engine in self.replicas:
            self.wait_ready(f"rasa-{index}", self.server_api(index, "/status"), show=show, timeout=900)
        self.wait_ready("proxy", self.rasa_url("/__proxy__/status"), show=show, timeout=30)

    def start_server(self, index: int, wait: bool = True, timeout: float = 600.0) -> None:
        """Start Rasa server ``index`` (1-based), pinned to its engine, on loopback only (the proxy is
        the way in); with ``wait``, until it answers."""
        _index, rasa_port, engine_port = self.replicas[index - 1]
        self.start_rasa(self.model, self.workdir / f"endpoints-rasa-{index}.yml", self.credentials, name=f"rasa-{index}",
                        port=rasa_port, env={"EMPATHY_ENGINE_URL": f"http://127.0.0.1:{engine_port}"},
                        interface="127.0.0.1")
        if wait:
            self.wait_ready(f"rasa-{index}", self.server_api(index, "/status"), timeout=timeout)

    def kill_server(self, index: int) -> None:
        """SIGKILL Rasa server ``index`` and everything it started, as a crash or an OOM kill would:
        no shutdown handler runs."""
        proc = self.procs.pop(f"rasa-{index}", None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(10)

    def start_proxy(self) -> subprocess.Popen:
        cmd = [sys.executable, str(self.root / "scripts" / "rrproxy.py"), "--listen", f"127.0.0.1:{self.ports['proxy']}"]
        for index, rasa_port, _engine in self.replicas:
            cmd += ["--upstream", f"rasa-{index}=127.0.0.1:{rasa_port}"]
        return self._spawn("proxy", cmd)

    def warm_up(self) -> None:
        """One message through each server's NLU (and so each engine's perception); nothing stored."""
        for index, _rasa, _engine in self.replicas:
            for _ in range(2):
                http_json(self.server_api(index, "/model/parse"), {"text": "I had a long day at work today"}, timeout=180)

    def proxy_status(self) -> Dict[str, Dict[str, object]]:
        status, data = http_json(self.rasa_url("/__proxy__/status"), timeout=5)
        return data.get("upstreams", {}) if status == 200 and isinstance(data, dict) else {}


def serve_scaled() -> int:
    """``make serve-scaled``: the scaled stack until Ctrl-C, or until one of its processes stops."""
    env = os.environ
    try:
        base = int(env.get("SCALED_PORT", 5205))
        stack = ScaledStack(
            proxy_port=base, rasa_ports=(base + 1, base + 2), engine_ports=(base + 3, base + 4), actions_port=base + 5,
            database_url=env.get("SCALED_DATABASE_URL", DEFAULT_SCALED_DATABASE),
            redis_url=env.get("SCALED_REDIS_URL", DEFAULT_SCALED_REDIS),
            engine_config=Path(env.get("ENGINE_CONFIG", ROOT / "engine.yml")),
            token=install_token(),
        )
    except ValueError as exc:
        print(f"error: {exc} (SCALED_PORT must be a port number)", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.monotonic()
    code = 0
    try:
        db = urllib.parse.urlsplit(stack.database_url)
        print(f"starting two engines, two Rasa servers, the action server and the proxy on PostgreSQL "
              f"{db.hostname}:{db.port or 5432}{db.path} and Redis (logs in {stack.logs}/)…", flush=True)
        stack.start(show=True)
        print(f"serving through the round-robin proxy: REST {stack.rasa_url('/webhooks/rest/webhook')}, "
              f"web chat http://localhost:{stack.ports['proxy']}/chat/", flush=True)
        for index, rasa_port, engine_port in stack.replicas:
            print(f"  rasa-{index} :{rasa_port} -> engine-{index} :{engine_port}", flush=True)
        print(f"  per-server counts: {stack.rasa_url('/__proxy__/status')} (Ctrl-C stops all)", flush=True)
        while True:
            time.sleep(1.0)
            for name, proc in list(stack.procs.items()):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode}; see {stack.logs / (name + '.log')}")
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
    except (RuntimeError, TimeoutError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        counts = {name: info.get("requests") for name, info in stack.proxy_status().items()}
        if counts:
            print(f"requests per Rasa server: {counts}", flush=True)
        stack.stop_all()
        print(f"stopped everything this session started ({time.monotonic() - started:.0f} s). Logs: {stack.logs}", flush=True)
    return code


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
    if mode not in ("chat", "serve", "serve-scaled"):
        print("usage: stack.py chat|serve|serve-scaled", file=sys.stderr)
        return 2
    if mode == "serve-scaled":
        return serve_scaled()
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
