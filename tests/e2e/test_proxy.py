"""scripts/rrproxy.py, the round-robin proxy of `make serve-scaled`, started for real in front of two
small HTTP servers on loopback: turns alternate, the server is named, a server that is down is
skipped, socket.io sessions stay with their server, bodies pass intact, bad requests get one line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple

import pytest

from tests.e2e.conftest import ROOT, free_port, http_json


def backend(name: str) -> ThreadingHTTPServer:
    """A server that answers with its name, the path and the length of the body it received."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            data = json.dumps({"server": name, "path": self.path, "received": len(body),
                               "forwarded_for": self.headers.get("X-Forwarded-For")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def proxy(tmp_path):
    servers = [backend("one"), backend("two")]
    port = free_port()
    down = free_port()  # nothing listens there
    log = open(tmp_path / "proxy.log", "wb")
    cmd = [sys.executable, str(ROOT / "scripts" / "rrproxy.py"), "--listen", f"127.0.0.1:{port}",
           "--upstream", f"one=127.0.0.1:{servers[0].server_address[1]}",
           "--upstream", f"gone=127.0.0.1:{down}",
           "--upstream", f"two=127.0.0.1:{servers[1].server_address[1]}"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while http_json(f"http://127.0.0.1:{port}/__proxy__/status", timeout=2)[0] != 200:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}", tmp_path / "proxy.log"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        for s in servers:
            s.shutdown()


def request(url: str, body: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict, Dict]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)


def test_round_robin_names_the_server_and_skips_one_that_is_down(proxy):
    url, log = proxy
    seen: List[str] = []
    for i in range(6):
        status, data, headers = request(f"{url}/webhooks/rest/webhook?token=secret{i}", b'{"message": "hi"}')
        assert status == 200 and headers["X-Upstream"] == data["server"] and headers["Connection"] == "close"
        assert data["forwarded_for"] == "127.0.0.1"
        seen.append(data["server"])
    # the second upstream refuses: its turns go to the next one, so "two" takes two turns in three
    assert seen == ["one", "two", "two"] * 2
    status, data, _ = request(f"{url}/__proxy__/status")
    assert data["upstreams"]["gone"]["refused"] == 2 and data["upstreams"]["one"]["requests"] == 2
    text = log.read_text()
    assert "POST /webhooks/rest/webhook -> one 200" in text and "secret" not in text  # no query (tokens) in the log


def test_bodies_pass_intact_both_ways(proxy):
    url, _ = proxy
    big = b"x" * 1_500_000
    status, data, _ = request(f"{url}/upload", big, {"Content-Type": "application/octet-stream"})
    assert status == 200 and data["received"] == len(big)


def test_socketio_sessions_stay_with_their_server(proxy):
    url, _ = proxy
    status, data, headers = request(f"{url}/socket.io/?EIO=4&transport=polling")
    cookie = headers["Set-Cookie"].split(";")[0]
    assert cookie == f"rr_upstream={data['server']}"
    for _ in range(4):
        _, again, later = request(f"{url}/socket.io/?EIO=4&transport=polling&sid=abc", headers={"Cookie": cookie})
        assert again["server"] == data["server"] and "Set-Cookie" not in later
    _, _, rest_headers = request(f"{url}/webhooks/rest/webhook", b"{}")  # REST: no cookie set
    assert "Set-Cookie" not in rest_headers


def test_malformed_request_and_no_server_left(proxy, tmp_path):
    url, _ = proxy
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"NOT HTTP\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in reply
    # a proxy whose servers are all down answers 502 with one readable line
    lone = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "rrproxy.py"), "--listen", f"127.0.0.1:{lone}",
                             "--upstream", f"gone=127.0.0.1:{free_port()}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while http_json(f"http://127.0.0.1:{lone}/__proxy__/status", timeout=2)[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        status, data, _ = request(f"http://127.0.0.1:{lone}/webhooks/rest/webhook", b"{}")
        assert status == 502 and data == {"error": "no Rasa server is reachable just now; try again shortly"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_websocket_upgrades_pass_through(tmp_path):
    """socket.io's websocket transport: after the 101 answer, bytes go both ways unchanged."""
    listener = socket.create_server(("127.0.0.1", 0))

    def echo_server() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            assert b"Upgrade: websocket" in head and b"Connection: Upgrade" in head
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                conn.sendall(data)

    threading.Thread(target=echo_server, daemon=True).start()
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "rrproxy.py"), "--listen", f"127.0.0.1:{port}",
                             "--upstream", f"ws=127.0.0.1:{listener.getsockname()[1]}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with client:
            client.sendall(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
                           b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += client.recv(4096)
            assert head.startswith(b"HTTP/1.1 101") and b"X-Upstream: ws" in head and b"Connection: close" not in head
            for frame in (b"first frame", b"second frame"):
                client.sendall(frame)
                assert client.recv(4096) == frame
    finally:
        proc.terminate()
        proc.wait(10)
        listener.close()
