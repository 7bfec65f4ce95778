"""Servers of a test's own, for tests that stop and restart them: a PostgreSQL server (``initdb`` +
``pg_ctl`` in a temporary folder) and a Redis server, each on a free port of its own, so that a
restart troubles nobody else's tests on the machine's shared services. Used by the agent tests (Rasa's
environment) and the end-to-end tests (the engine's): the standard library only, plus ``psycopg`` for
:meth:`PrivatePostgres.query` (engine environment)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, TypeVar

S = TypeVar("S", "PrivatePostgres", "PrivateRedis")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable(reason: str) -> None:
    """A service the test needs is missing: skip on a developer's machine; under CI fail, so that a
    suite that could not run is never reported as passed."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def running(server: S) -> Iterator[S]:
    """``server`` started, and stopped (its folder removed) on exit — what a fixture yields."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


def postgres_bindir() -> Optional[Path]:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` in a temporary folder on a port of its own. As root (the project's
    machines) the server runs as the ``postgres`` user, which PostgreSQL insists on."""

    def __init__(self, bindir: Path, port: int) -> None:
        self.bindir = bindir
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="empathy-e2e-pg-"))
        self.data = self.dir / "data"
        self.prefix: List[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.options = f"-p {port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"

    def _run(self, *args: str, timeout: float = 120) -> None:
        out = subprocess.run(self.prefix + [str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} {args[1] if len(args) > 1 else ''} failed: {out.stderr.strip()[-500:]}")

    def start(self) -> None:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", self.options, "-w", "start")

    def restart(self, down_s: float = 2.0) -> None:
        """Stop (fast, as ``pg_ctlcluster … restart`` does: open sessions are ended), stay down for
        ``down_s`` seconds so that turns arrive meanwhile, start again."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def query(self, db: str, sql: str, *args: Any) -> List[tuple]:
        import psycopg

        with psycopg.connect(self.url(db), connect_timeout=10) as con:
            return con.execute(sql, args).fetchall()


class PrivateRedis:
    """``redis-server`` on a port of its own, keeping nothing on disk (as the machine's Redis);
    ``restart`` stops it for ``down_s`` seconds, which forgets every key, as a real restart without
    persistence does."""

    def __init__(self, port: Optional[int] = None, binary: Optional[str] = None) -> None:
        self.binary = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="empathy-redis-"))
        self.process: Optional[subprocess.Popen] = None

    @staticmethod
    def available() -> bool:
        return bool(shutil.which("redis-server") or Path("/usr/bin/redis-server").exists())

    def start(self, timeout: float = 20.0) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout:.0f} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, down_s: float = 2.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: int = 1) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def log_tail(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")[-500:]
        except OSError:
            return ""
