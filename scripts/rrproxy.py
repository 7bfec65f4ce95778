#!/usr/bin/env python3
"""A small round-robin HTTP reverse proxy in front of several ``rasa run`` servers.

    python scripts/rrproxy.py --listen 127.0.0.1:5205 --upstream rasa-1=127.0.0.1:5206 --upstream rasa-2=127.0.0.1:5207

Why our own: the project's machines have neither nginx nor HAProxy and reach no package registry,
and ``make serve-scaled`` must show the scaled-out shape on loopback. In production a real load
balancer (a Kubernetes Service / Ingress, nginx, HAProxy) takes this place (docs/deployment.md).
It is the standard library only, so it runs under either interpreter.

What it does, and why:

* Each request goes to the next server in turn (round robin). The server that answered is named in
  the response header ``X-Upstream`` (the end-to-end test counts the turns each Rasa server took).
* A server that refuses the connection is skipped and the next one tried; nothing has been sent to
  it yet, so the retry is safe. When none accepts, the client gets 502 with a JSON ``error``.
* Requests under ``/socket.io/`` stay with one server: socket.io's long-polling transport keeps the
  session in the server's memory, so every request of a session must reach the server that opened
  it. The proxy sets a cookie naming the server on those responses and routes by it (what HAProxy's
  ``cookie … insert`` does); a REST client without cookies is not affected.
* WebSocket upgrades are passed through: after the request head, bytes are copied both ways.
* One request per client connection (``Connection: close`` both ways): the body needs no parsing,
  and the upstream's end of the response is the end of the reply.
* ``GET /__proxy__/status`` is answered by the proxy itself: the servers and the requests each took.
* The log has one line per request: method, path without its query (Rasa's API takes its token as
  ``?token=``), server, status, milliseconds — never a body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Dict, List, Optional, Sequence, Set, Tuple

log = logging.getLogger("rrproxy")

HEAD_LIMIT = 64 * 1024
COOKIE = "rr_upstream"
STICKY_PREFIXES = ("/socket.io/",)
STATUS_PATH = "/__proxy__/status"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}


@dataclass
class Upstream:
    name: str
    host: str
    port: int
    requests: int = 0
    refused: int = 0

    def describe(self) -> Dict[str, object]:
        return {"url": f"http://{self.host}:{self.port}", "requests": self.requests, "refused": self.refused}


@dataclass
class RequestHead:
    method: str
    target: str
    version: str
    headers: List[Tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> Optional[str]:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def upgrade(self) -> bool:
        connection = (self.get("connection") or "").lower()
        return "upgrade" in connection and bool(self.get("upgrade"))


def parse_request_head(raw: bytes) -> RequestHead:
    """The request line and headers (latin-1, as HTTP/1.1 defines them); ValueError when malformed."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError("malformed request line")
    head = RequestHead(parts[0], parts[1], parts[2])
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError("malformed header line")
        head.headers.append((name.strip(), value.strip()))
    return head


def parse_upstream(spec: str) -> Upstream:
    """``name=host:port`` (or ``host:port``, named by itself)."""
    name, _, address = spec.rpartition("=")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"upstream {spec!r}: expected name=host:port")
    return Upstream(name or address, host, int(port))


class RoundRobinProxy:
    def __init__(self, upstreams: Sequence[Upstream], timeout_s: float = 600.0, connect_timeout_s: float = 5.0) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = list(upstreams)
        self.by_name = {u.name: u for u in self.upstreams}
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._next = 0
        # asyncio keeps only weak references to tasks, and a stream protocol only a weak one to its
        # reader: once the client has closed its end (it read the whole reply) while the server has
        # not yet closed its own, nothing else holds a handler, and the garbage collector would
        # destroy it mid-flight (seen: "Task was destroyed but it is pending!"). Hold them here.
        self._handlers: Set["asyncio.Task[None]"] = set()

    # -- choosing -------------------------------------------------------------------------------
    def candidates(self, head: RequestHead) -> List[Upstream]:
        """The servers to try, in order: the one the session cookie names (socket.io), else the next
        in turn; then the others, for when it refuses the connection."""
        first = self._sticky(head)
        if first is None:
            first = self.upstreams[self._next % len(self.upstreams)]
            self._next += 1
        start = self.upstreams.index(first)
        return self.upstreams[start:] + self.upstreams[:start]

    def _sticky(self, head: RequestHead) -> Optional[Upstream]:
        raw = head.get("cookie")
        if not raw:
            return None
        cookie = SimpleCookie()
        try:
            cookie.load(raw)
        except Exception:  # noqa: BLE001 - a cookie header we cannot read: route as if absent
            return None
        morsel = cookie.get(COOKIE)
        return self.by_name.get(morsel.value) if morsel else None

    # -- serving --------------------------------------------------------------------------------
    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._handle(client_reader, client_writer)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        start = time.perf_counter()
        peer = (client_writer.get_extra_info("peername") or ("?",))[0]
        try:
            raw = await asyncio.wait_for(client_reader.readuntil(b"\r\n\r\n"), timeout=30)
            head = parse_request_head(raw[:-4])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError, ValueError) as exc:
            if not isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
                await self._reply(client_writer, 400, {"error": "malformed HTTP request"})
            await self._close(client_writer)
            return
        if head.method == "GET" and head.path == STATUS_PATH:
            await self._reply(client_writer, 200, {"upstreams": {u.name: u.describe() for u in self.upstreams}})
            await self._close(client_writer)
            return
        status, name = await self._forward(head, peer, client_reader, client_writer)
        log.info("%s %s -> %s %s %.0f ms", head.method, head.path, name or "-", status, (time.perf_counter() - start) * 1000)

    async def _forward(self, head: RequestHead, peer: str, client_reader: asyncio.StreamReader,
                       client_writer: asyncio.StreamWriter) -> Tuple[int, Optional[str]]:
        upstream, reader, writer = None, None, None
        for candidate in self.candidates(head):
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(candidate.host, candidate.port),
                                                        timeout=self.connect_timeout_s)
            except (OSError, asyncio.TimeoutError):
                candidate.refused += 1
                log.warning("upstream %s at %s:%d refused the connection; trying the next", candidate.name,
                            candidate.host, candidate.port)
                continue
            upstream = candidate
            break
        if upstream is None or reader is None or writer is None:
            await self._reply(client_writer, 502, {"error": "no Rasa server is reachable just now; try again shortly"})
            await self._close(client_writer)
            return 502, None
        upstream.requests += 1
        writer.write(self._upstream_head(head, peer))
        upload = asyncio.ensure_future(self._pipe(client_reader, writer))
        status = 502
        try:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=self.timeout_s)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
                await self._reply(client_writer, 502, {"error": f"the Rasa server ({upstream.name}) gave no answer"})
                return 502, upstream.name
            status_line, _, rest = raw.partition(b"\r\n")
            try:
                status = int(status_line.split(b" ")[1])
            except (IndexError, ValueError):
                status = 502
            try:
                client_writer.write(self._client_head(head, status_line, rest[:-4], upstream))
                await client_writer.drain()
            except ConnectionError:
                return status, upstream.name  # the client left before its answer: nothing to tell it
            await self._pipe(reader, client_writer)
            return status, upstream.name
        finally:
            upload.cancel()
            await self._close(writer)
            await self._close(client_writer)

    def _upstream_head(self, head: RequestHead, peer: str) -> bytes:
        lines = [f"{head.method} {head.target} {head.version}"]
        for key, value in head.headers:
            lower = key.lower()
            if lower in HOP_BY_HOP and not (head.upgrade and lower in ("connection", "upgrade")):
                continue
            if lower.startswith("x-forwarded-"):
                continue
            lines.append(f"{key}: {value}")
        if not head.upgrade:
            lines.append("Connection: close")
        lines += [f"X-Forwarded-For: {peer}", "X-Forwarded-Proto: http"]
        if head.get("host"):
            lines.append(f"X-Forwarded-Host: {head.get('host')}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _client_head(self, head: RequestHead, status_line: bytes, header_block: bytes, upstream: Upstream) -> bytes:
        lines = [status_line]
        upgraded = status_line.split(b" ")[1:2] == [b"101"]
        for line in header_block.split(b"\r\n"):
            if not line:
                continue
            if not upgraded and line.split(b":", 1)[0].strip().lower() in (b"connection", b"keep-alive"):
                continue
            lines.append(line)
        if not upgraded:
            lines.append(b"Connection: close")
        lines.append(f"X-Upstream: {upstream.name}".encode("latin-1"))
        if head.path.startswith(STICKY_PREFIXES) and self._sticky(head) is not upstream:
            lines.append(f"Set-Cookie: {COOKIE}={upstream.name}; Path=/; HttpOnly; SameSite=Lax".encode("latin-1"))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, body: Dict[str, object]) -> None:
        reason = {200: "OK", 400: "Bad Request", 502: "Bad Gateway"}.get(status, "Error")
        data = json.dumps(body).encode()
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     f"Connection: close\r\n\r\n".encode("latin-1") + data)
        try:
            await writer.drain()
        except ConnectionError:
            pass

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), timeout=5)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass


async def serve(host: str, port: int, proxy: RoundRobinProxy) -> None:
    server = await asyncio.start_server(proxy.handle, host, port, limit=HEAD_LIMIT)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    names = ", ".join(f"{u.name}={u.host}:{u.port}" for u in proxy.upstreams)
    log.info("round-robin proxy on http://%s:%d -> %s", host, port, names)
    async with server:
        await stop.wait()
    log.info("stopped; requests per server: %s", {u.name: u.requests for u in proxy.upstreams})


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Round-robin HTTP reverse proxy (see the module's docstring).")
    parser.add_argument("--listen", default="127.0.0.1:5205", help="host:port to listen on")
    parser.add_argument("--upstream", action="append", required=True, help="name=host:port; repeat for each server")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a server's answer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        upstreams = [parse_upstream(spec) for spec in args.upstream]
        host, _, port = args.listen.rpartition(":")
        proxy = RoundRobinProxy(upstreams, timeout_s=args.timeout)
        asyncio.run(serve(host or "127.0.0.1", int(port), proxy))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
