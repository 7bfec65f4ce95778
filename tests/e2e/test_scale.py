"""The scaled-out stack for real (`make serve-scaled`'s :class:`ScaledStack`): two `rasa run` servers
behind the round-robin proxy, sharing a PostgreSQL tracker store and a Redis lock store, each pinned
to its own engine, the engines sharing the PostgreSQL database.

1. Conversations spread over both servers stay whole: 8 conversations × 5 turns, 4 at once, through
   the proxy (the ``X-Upstream`` header names the server of each turn), then two messages of one
   conversation at the same moment, one to each server directly (only the shared lock keeps them
   apart). In PostgreSQL every user message is stored once, in order, each turn's events together,
   and the engines' turn indices run 0, 1, 2, … whichever engine wrote them.
2. A soak through a PostgreSQL restart: 6 conversations × 5 turns, 4 at once, and the database
   restarted (stopped, down 2 s, started) after a third of the turns, with turns in flight. Nothing
   is lost: every user message once and in order, every turn answered (the domain's text while the
   database was away), the engines' tables agree with Rasa's events, and no turn went to Rasa's
   in-memory fail-safe. The figures are printed (``pytest -s``).

With Rasa's own stores both fail (``E2E_TRACKER_STORE=SQL``, ``E2E_LOCK_STORE=redis``; see
agent/tracker_store.py and agent/lock_store.py).

PostgreSQL is a server of the test's own (``initdb`` in a temporary folder, its own port), so the
restart troubles nobody else's tests on the machine's shared cluster; Redis is the machine's, with a
key prefix of this run. Bounded for CI on two cores: about 3 minutes together, 70–105 s of it
starting two engines and two Rasa servers at once.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from tests.e2e.conftest import MODEL, ROOT, free_port, http_json
from stack import ScaledStack  # noqa: E402  (scripts/ is on the path: tests/e2e/conftest.py)

pytestmark = pytest.mark.postgres

TURNS = [
    "my sister is moving abroad next month",
    "we've never lived more than an hour apart",
    "I'm happy for her but I keep tearing up",
    "we're planning one last road trip together",
    "I guess I'll learn to love video calls",
]
SOAK_TURNS = [
    "I got the keys to my first flat today",
    "it's tiny and the kitchen is ancient",
    "but it's mine and nobody can take it away",
    "my dad helped me carry the sofa up four floors",
    "tonight I'm eating pizza on the floor",
]
CONVERSATIONS, AT_ONCE = 8, 4
SOAK_CONVERSATIONS = 6  # × 5 turns, AT_ONCE at once
REDIS_URL = os.environ.get("SCALED_REDIS_URL", "redis://127.0.0.1:6379/1")


# -- a PostgreSQL server of the test's own ------------------------------------------------------
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


def redis_reachable(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=3):
            return True
    except OSError:
        return False


def unavailable(reason: str) -> None:
    """Skip on a machine without the service; under CI run, and fail (as the other PostgreSQL tests)."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pg():
    bindir = postgres_bindir()
    if bindir is None:
        unavailable("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    server = PrivatePostgres(bindir, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scaled(pg, tmp_path_factory):
    if not MODEL.is_file():
        pytest.fail("models/assistant.tar.gz is missing: run `make setup` first")
    if not redis_reachable(REDIS_URL):
        unavailable(f"Redis is not reachable at {REDIS_URL} (the Rasa servers' lock store)")
    workdir = tmp_path_factory.mktemp("scale")
    stack = ScaledStack(
        proxy_port=free_port(), rasa_ports=(free_port(), free_port()), engine_ports=(free_port(), free_port()),
        actions_port=free_port(), database_url=pg.url("empathy_e2e"), redis_url=REDIS_URL,
        lock_prefix=f"e2e{uuid.uuid4().hex[:10]}", logs=workdir / "logs", workdir=workdir,
        token=f"e2e-{uuid.uuid4().hex}",
        # Rasa's own stores for comparison: E2E_TRACKER_STORE=SQL, E2E_LOCK_STORE=redis (docs/deployment.md)
        tracker_store_type=os.environ.get("E2E_TRACKER_STORE", "agent.tracker_store.ReconnectingSQLTrackerStore"),
        lock_store_type=os.environ.get("E2E_LOCK_STORE", "agent.lock_store.AtomicRedisLockStore"),
    )
    started = time.monotonic()
    try:
        stack.start()
        print(f"\nscaled stack ready in {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        stack.stop_all()


# -- talking --------------------------------------------------------------------------------------
def post(url: str, body: Dict[str, Any], timeout: float = 180) -> Tuple[int, Any, Optional[str]]:
    """POST JSON; ``(status, decoded body, the proxy's X-Upstream header)``; status 0 when unreachable."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null"), resp.headers.get("X-Upstream")
    except urllib.error.HTTPError as exc:
        return exc.code, None, exc.headers.get("X-Upstream")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc), None


def answered(status: int, replies: Any) -> bool:
    return status == 200 and isinstance(replies, list) and bool(replies) and all(
        (r.get("text") or "").strip() for r in replies)


# -- what is stored ---------------------------------------------------------------------------------
def stored_events(pg: PrivatePostgres, sender: str) -> List[Dict[str, Any]]:
    rows = pg.query("empathy_e2e", "select data from events where sender_id = %s order by id", sender)
    return [json.loads(data) for (data,) in rows]


def engine_rows(pg: PrivatePostgres, sender: str) -> List[tuple]:
    return pg.query(
        "empathy_e2e",
        "select t.turn_index, t.user_text, r.response_name, r.text from empathy_turns t "
        "join empathy_conversations c on c.id = t.conversation_id left join empathy_replies r on r.turn_id = t.id "
        "where c.sender_id = %s order by t.turn_index, r.id", sender)


def check_whole(sender: str, events: List[Dict[str, Any]]) -> Dict[int, List[Optional[str]]]:
    """Each turn's events together and once: every user message is followed by its own actions and
    replies, ending in ``action_listen``, before the next user message; no event stored twice; every
    turn has a reply. Returns, per user turn, the generator of each reply (``agent-fallback``: the
    domain's text)."""
    rows = [json.dumps(e, sort_keys=True) for e in events]
    assert len(set(rows)) == len(rows), (sender, "an event is stored twice")
    by_turn: Dict[int, List[Optional[str]]] = {}
    turn = -1
    for i, e in enumerate(events):
        if e["event"] == "user":
            if turn >= 0:
                assert events[i - 1]["event"] == "action" and events[i - 1]["name"] == "action_listen", (
                    sender, turn, "turns interleave")
            turn += 1
            by_turn[turn] = []
        elif e["event"] == "bot" and turn >= 0:
            by_turn[turn].append((e.get("metadata") or {}).get("empathy", {}).get("generator"))
        elif e["event"] == "action" and e["name"] == "action_listen" and turn >= 0:
            assert by_turn[turn], (sender, turn, "a turn without a reply")
    assert events and events[-1]["event"] == "action" and events[-1]["name"] == "action_listen", (sender, "unfinished")
    return by_turn


def check_engine_agrees(sender: str, users: List[str], by_turn: Dict[int, List[Optional[str]]], rows: List[tuple]) -> None:
    """The engines' rows agree with Rasa's events: turns numbered 0, 1, 2, … with no gap or double,
    in Rasa's order, each message once (minus turns the engines never saw); a turn perceived but not
    answered by an engine was answered with the domain's text, and a turn an engine answered was not."""
    indices = sorted({r[0] for r in rows})
    assert indices == list(range(len(indices))), (sender, indices)
    position = {text: i for i, text in enumerate(users)}
    seen = [position[text] for _index, text in sorted({(r[0], r[1]) for r in rows})]
    assert seen == sorted(set(seen)), (sender, seen)
    for _index, text, response, reply in rows:
        at = position[text]
        if response is None:
            assert by_turn.get(at) and set(by_turn[at]) == {"agent-fallback"}, (sender, at, by_turn.get(at))
        else:
            assert reply and "agent-fallback" not in by_turn.get(at, []), (sender, at, by_turn.get(at))


def failsafe_lines(stack: ScaledStack) -> List[str]:
    """Rasa's fail-safe writing to memory instead of SQL (what must never happen)."""
    lines = []
    for index, _rasa, _engine in stack.replicas:
        log = (stack.logs / f"rasa-{index}.log").read_text(errors="replace")
        lines += [line for line in log.splitlines() if "Falling back to use the 'InMemoryTrackerStore'" in line]
    return lines


# -- the tests ---------------------------------------------------------------------------------------
def test_conversations_spread_over_two_rasa_servers_stay_whole(scaled, pg):
    started = time.monotonic()
    run = uuid.uuid4().hex[:6]
    senders = [f"scale-{run}-{i}" for i in range(CONVERSATIONS)]
    sent: Dict[str, List[str]] = {s: [] for s in senders}
    servers: Dict[str, List[Optional[str]]] = {s: [] for s in senders}
    results: Dict[str, List[Tuple[int, Any]]] = {s: [] for s in senders}
    at_once = threading.Semaphore(AT_ONCE)

    def talk(sender: str) -> None:
        for i, base in enumerate(TURNS):
            text = f"{base} ({i})"
            with at_once:
                status, replies, upstream = post(scaled.rasa_url("/webhooks/rest/webhook"), {"sender": sender, "message": text})
            sent[sender].append(text)
            servers[sender].append(upstream)
            results[sender].append((status, replies))

    with ThreadPoolExecutor(CONVERSATIONS) as pool:
        for f in [pool.submit(talk, s) for s in senders]:
            f.result(timeout=600)

    # Two messages of one conversation at the same moment, one to each server: the shared lock store
    # makes the second wait for the first; without it both read the same tracker and the second save
    # drops events of the first. (Whether two servers collide is a matter of timing: with Rasa's own
    # Redis lock store this caught the race in one run of two; tests/agent/test_lock_store.py
    # provokes it reliably.)
    pairs = senders[:4]
    gate = threading.Barrier(2 * len(pairs))
    together: Dict[str, List[Tuple[int, Any, str]]] = {s: [] for s in pairs}

    def at_the_same_moment(sender: str, index: int) -> None:
        text = f"and one more thing for server {index}"
        gate.wait(30)
        status, replies, _ = post(scaled.server_url(index, "/webhooks/rest/webhook"), {"sender": sender, "message": text})
        together[sender].append((status, replies, text))

    with ThreadPoolExecutor(2 * len(pairs)) as pool:
        for f in [pool.submit(at_the_same_moment, s, i) for s in pairs for i in (1, 2)]:
            f.result(timeout=300)

    per_server = Counter(u for s in senders for u in servers[s])
    # a conversation on both servers: through the round-robin proxy (whether one moves there depends
    # on how the requests interleave), and always for the pairs sent to each server at once
    spanning = sum(len(set(servers[s]) | ({"rasa-1", "rasa-2"} if s in together else set())) > 1 for s in senders)
    lost = sum(not answered(st, r) for s in senders for st, r in results[s] + [(st, r) for st, r, _t in together.get(s, [])])
    stored = {s: stored_events(pg, s) for s in senders}
    missing = sum(len(sent[s]) + len(together.get(s, [])) - sum(e["event"] == "user" for e in stored[s]) for s in senders)
    batches = {f"engine-{i}": http_json(scaled.engine_url_of(i, "/health"))[1]["models"]["batching"]["batches"]
               for i, _r, _e in scaled.replicas}
    turns = CONVERSATIONS * len(TURNS)
    print(f"\nscale: {CONVERSATIONS} conversations x {len(TURNS)} turns, {AT_ONCE} at once through the proxy: "
          f"{dict(sorted(per_server.items()))} turns per Rasa server, {spanning}/{CONVERSATIONS} conversations on both; "
          f"+{2 * len(pairs)} messages sent in pairs at the same moment to both servers; generation batches per engine "
          f"{batches}; {lost} unanswered, {missing} user messages missing from the tracker store; "
          f"{time.monotonic() - started:.0f} s")
    for sender in senders:
        events = stored[sender]
        users = [e["text"] for e in events if e["event"] == "user"]
        if sender in together:
            assert users[:len(TURNS)] == sent[sender], sender  # in order, each once
            assert sorted(users[len(TURNS):]) == sorted(t for _s, _r, t in together[sender]), (sender, users)
        else:
            assert users == sent[sender], sender
        by_turn = check_whole(sender, events)
        check_engine_agrees(sender, users, by_turn, engine_rows(pg, sender))
    assert lost == 0 and missing == 0
    assert set(per_server) == {"rasa-1", "rasa-2"} and min(per_server.values()) >= turns // 3, per_server
    assert spanning >= len(pairs)  # conversations moved between servers (and so between engines) and stayed whole
    assert all(n > 0 for n in batches.values()), batches  # both engines generated
    assert not failsafe_lines(scaled)


def test_a_postgresql_restart_mid_run_loses_nothing(scaled, pg):
    started = time.monotonic()
    run = uuid.uuid4().hex[:6]
    senders = [f"pgsoak-{run}-{i}" for i in range(SOAK_CONVERSATIONS)]
    sent: Dict[str, List[str]] = {s: [] for s in senders}
    results: Dict[str, List[Tuple[int, Any]]] = {s: [] for s in senders}
    total = SOAK_CONVERSATIONS * len(SOAK_TURNS)
    at_once = threading.Semaphore(AT_ONCE)
    lock = threading.Lock()
    progress = {"done": 0, "in_flight": 0}
    third = threading.Event()
    restart: Dict[str, Any] = {}
    boot_before = pg.query("postgres", "select pg_postmaster_start_time()")[0][0]

    def talk(sender: str) -> None:
        for i, base in enumerate(SOAK_TURNS):
            text = f"{base} ({i})"
            with at_once:
                with lock:
                    progress["in_flight"] += 1
                status, replies, _ = post(scaled.rasa_url("/webhooks/rest/webhook"), {"sender": sender, "message": text})
                with lock:
                    progress["in_flight"] -= 1
                    progress["done"] += 1
                    if progress["done"] >= total // 3:
                        third.set()
            sent[sender].append(text)
            results[sender].append((status, replies))

    def restart_postgres() -> None:
        assert third.wait(600)
        with lock:
            restart["done_before"], restart["in_flight"] = progress["done"], progress["in_flight"]
        t0 = time.monotonic()
        pg.restart()
        restart["seconds"] = time.monotonic() - t0

    with ThreadPoolExecutor(SOAK_CONVERSATIONS + 1) as pool:
        restarter = pool.submit(restart_postgres)
        for f in [pool.submit(talk, s) for s in senders]:
            f.result(timeout=900)
        restarter.result(timeout=60)

    boot_after = pg.query("postgres", "select pg_postmaster_start_time()")[0][0]
    answered_n = sum(answered(st, r) for s in senders for st, r in results[s])
    lost = total - answered_n
    stored = {s: stored_events(pg, s) for s in senders}
    missing = sum(len(sent[s]) - sum(e["event"] == "user" for e in stored[s]) for s in senders)
    fallbacks = sum(e["event"] == "bot" and (e.get("metadata") or {}).get("empathy", {}).get("generator") == "agent-fallback"
                    for s in senders for e in stored[s])
    retries = sum((scaled.logs / f"rasa-{i}.log").read_text(errors="replace").count("the database is unavailable")
                  for i, _r, _e in scaled.replicas)
    unavailable_503 = sum((scaled.logs / f"engine-{i}.log").read_text(errors="replace").count("state database unavailable")
                          for i, _r, _e in scaled.replicas)
    print(f"\npostgres soak: {total} turns sent ({SOAK_CONVERSATIONS} conversations, {AT_ONCE} at once), {answered_n} answered, "
          f"{fallbacks} answered by the domain text, {lost} lost, {missing} user messages missing from the tracker "
          f"store; PostgreSQL restarted after {restart['done_before']} turns with {restart['in_flight']} in flight, "
          f"down for {restart['seconds']:.1f} s; tracker store retries {retries}, engine 503s {unavailable_503}; "
          f"{time.monotonic() - started:.0f} s")
    for sender in senders:
        events = stored[sender]
        users = [e["text"] for e in events if e["event"] == "user"]
        assert users == sent[sender], (sender, users)  # every message once, in order
        by_turn = check_whole(sender, events)
        check_engine_agrees(sender, users, by_turn, engine_rows(pg, sender))
    assert boot_after > boot_before  # the server did restart
    assert restart["done_before"] < total  # mid-run, not after the last turn
    assert answered_n == total and lost == 0 and missing == 0
    assert not failsafe_lines(scaled)  # no turn went to Rasa's in-memory fallback instead of SQL
