"""The engine's HTTP application (FastAPI; OpenAPI schema at ``/openapi.json``, docs at ``/docs``).

* ``POST /nlg`` — Rasa's NLG protocol.
* ``POST /perceive`` — emotion, causes, CM plan and crisis flag for a message in its context.
* ``GET /health`` — 200 ``ok`` only once every model is loaded (503 ``loading`` before), with
  the ``/nlg`` queue (``in_flight``, ``limit``, ``refused``).
* ``GET /conversations/{sender_id}`` — the stored empathy state of a conversation.
* ``GET /users/{sender_id}/persona`` — the persona facts remembered for a user (sender);
  ``DELETE`` forgets them (and nothing else: turns, replies and crisis state stay).

Models load in a background thread at start, so ``/health`` answers at once. An optional bearer
token guards every route but ``/health`` (``Authorization: Bearer …`` or Rasa's ``?token=…``).
Bodies above ``server.max_body_bytes`` get 413; invalid bodies 422 with what is wrong; nothing is
persisted for a rejected request. ``/nlg`` admits one request the model answers plus
``server.nlg_queue`` waiting for it; one more gets 503 with ``Retry-After`` (the agent's NLG then
answers with the domain's text for that response) — a burst never piles up past what the clients'
timeouts can wait for. A client that sends ``X-Request-Timeout: <seconds>`` (the agent's NLG does)
gets 504 once that time, less ``server.deadline_margin_s``, has passed — checked before the work
starts and before the one write — and nothing is stored: a reply the client has stopped waiting for
(it answered from the domain) is neither generated after a long queue wait nor kept as if the user
had seen it; ``/health``'s queue counts them (``expired``). While the state database is unreachable
(a PostgreSQL restart), requests that need it get 503 with ``Retry-After`` too, and nothing
half-written stays behind.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, Callable, Mapping, Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from empathy_nlg import __version__
from empathy_nlg.api.schemas import (
    API_VERSION,
    TIMEOUT_HEADER,
    ErrorResponse,
    HealthResponse,
    NLGRequest,
    NLGResponse,
    PerceiveRequest,
    PerceiveResponse,
    PersonaForgetResponse,
    PersonaResponse,
)
from empathy_nlg.domain import UnknownResponseError
from empathy_nlg.engine import DeadlinePassed, EmpathyEngine

log = logging.getLogger(__name__)


class EngineHolder:
    """Holds the engine while (and after) it loads in the background."""

    def __init__(self, loader: Callable[[], EmpathyEngine]) -> None:
        self._loader = loader
        self.engine: Optional[EmpathyEngine] = None
        self.error: Optional[str] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._load, name="engine-loader", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            engine = self._loader()
            warm_up = getattr(engine, "warm_up", None)
            if warm_up is not None:  # /health says ok only once a turn would be answered at full speed
                log.info("engine warmed up in %.1f s", warm_up())
            self.engine = engine
        except Exception as exc:  # reported by /health; the process stays up to say why
            log.exception("engine failed to load")
            self.error = f"{type(exc).__name__}: {exc}"

    def wait(self, timeout: Optional[float] = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def require(self) -> EmpathyEngine:
        if self.engine is None:
            raise HTTPException(status_code=503, detail=self.error or "models are still loading")
        return self.engine


class Admission:
    """At most ``limit`` ``/nlg`` requests inside the engine at once: the one the model answers and
    the ones waiting for it (the engine answers one at a time). :meth:`enter` says whether one more
    may come in; :meth:`retry_after` estimates when a refused one should come back."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.in_flight = 0
        self.refused = 0
        self.expired = 0  # requests dropped because their client's deadline passed (504)
        self._seconds: deque = deque(maxlen=20)  # the latest requests' durations
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.in_flight >= self.limit:
                self.refused += 1
                return False
            self.in_flight += 1
            return True

    def leave(self, seconds: float) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            self._seconds.append(float(seconds))

    def expire(self) -> None:
        with self._lock:
            self.expired += 1

    def retry_after(self) -> int:
        """Whole seconds until the queue has likely drained (1–60): the queue times the recent mean."""
        with self._lock:
            mean = sum(self._seconds) / len(self._seconds) if self._seconds else 1.0
            return int(min(60, max(1, math.ceil(mean * self.in_flight))))

    def snapshot(self) -> dict:
        with self._lock:
            return {"in_flight": self.in_flight, "limit": self.limit, "refused": self.refused, "expired": self.expired}


def create_app(settings: Mapping[str, Any], loader: Optional[Callable[[], EmpathyEngine]] = None) -> FastAPI:
    """Build the app; ``loader`` (default: :meth:`EmpathyEngine.load`) runs in a background thread."""
    server = settings["server"]
    token: Optional[str] = server.get("token") or None
    max_body = int(server["max_body_bytes"])
    max_chars = int(server["max_message_chars"])
    max_events = int(server["max_events"])
    holder = EngineHolder(loader or (lambda: EmpathyEngine.load(settings)))
    admission = Admission(1 + int(server["nlg_queue"]))
    margin = float(server["deadline_margin_s"])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder.start()
        yield

    app = FastAPI(
        title="Empathy engine",
        version=f"{__version__} (api v{API_VERSION})",
        description="Perception, empathetic generation and conversation state for a Rasa assistant.",
        lifespan=lifespan,
        responses={401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    )
    app.state.holder = holder
    app.state.admission = admission

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            return JSONResponse(status_code=413, content={"error": f"request body over {max_body} bytes"})
        if request.method in ("POST", "PUT", "PATCH") and length is None:
            body = await request.body()  # chunked upload: measure what arrived
            if len(body) > max_body:
                return JSONResponse(status_code=413, content={"error": f"request body over {max_body} bytes"})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        problems = [
            {"where": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": e.get("msg")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{p['where'] or 'body'}: {p['problem']}" for p in problems[:5])
        return JSONResponse(status_code=422, content={"error": f"invalid request: {summary}", "detail": problems})

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)

    async def database_unavailable(_request: Request, exc: Exception):
        # The state database is restarting or unreachable: a turn cannot be stored, so it is not
        # answered either (a reply is written with its turn or not at all). 503 + Retry-After tells
        # the agent to retry or answer from the domain; one line in the log, not a traceback per
        # request while it lasts (the pool reconnects by itself: pool_pre_ping).
        orig = getattr(exc, "orig", None) or exc
        first = (str(orig).strip().splitlines() or [""])[0][:200]
        log.warning("state database unavailable (%s: %s); answered 503", type(orig).__name__, first)
        return JSONResponse(status_code=503, headers={"Retry-After": "2"},
                            content={"error": "the state database is unavailable just now; retry shortly"})

    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(InterfaceError, database_unavailable)

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(status_code=500, content={"error": f"internal error: {type(exc).__name__}"})

    def authorise(request: Request) -> None:
        if not token:
            return
        supplied = request.query_params.get("token")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            supplied = header[7:].strip()
        if not supplied or not hmac.compare_digest(supplied, token):
            raise HTTPException(status_code=401, detail="missing or wrong token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health():
        if holder.engine is not None:
            return HealthResponse(status="ok", models=holder.engine.describe(), queue=admission.snapshot())
        status = "error" if holder.error else "loading"
        body = HealthResponse(status=status, detail=holder.error or "models are loading", queue=admission.snapshot())
        return JSONResponse(status_code=503, content=body.model_dump())

    def deadline_of(request: Request) -> Optional[float]:
        """``X-Request-Timeout: <seconds>``, how long the client waits for this request, as a
        ``time.monotonic()`` deadline less ``server.deadline_margin_s`` (the time the answer takes to
        reach the client); None when the client sends no header."""
        value = request.headers.get(TIMEOUT_HEADER)
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not math.isfinite(seconds) or seconds <= 0:
            raise HTTPException(status_code=422, detail=f"invalid request: header {TIMEOUT_HEADER} must be a positive number of seconds")
        return time.monotonic() + seconds - margin

    @app.post("/nlg", response_model=NLGResponse, responses={504: {"model": ErrorResponse}},
              dependencies=[Depends(authorise)])
    async def nlg(body: NLGRequest, request: Request):
        deadline = deadline_of(request)
        if len(body.tracker.events) > max_events:
            raise HTTPException(status_code=413, detail=f"tracker has {len(body.tracker.events)} events; limit {max_events}")
        engine = holder.require()
        if not admission.enter():
            wait = admission.retry_after()
            raise HTTPException(status_code=503, headers={"Retry-After": str(wait)},
                                detail=f"engine busy: {admission.limit} requests already in the queue; retry in {wait} s")
        start = time.perf_counter()
        try:
            return await run_in_threadpool(engine.nlg, body.model_dump(), deadline)
        except UnknownResponseError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except DeadlinePassed as exc:
            admission.expire()
            log.warning("/nlg dropped: %s; nothing stored", exc)
            raise HTTPException(status_code=504, detail=f"{exc}; nothing was stored") from None
        finally:
            admission.leave(time.perf_counter() - start)

    @app.post("/perceive", response_model=PerceiveResponse, dependencies=[Depends(authorise)])
    async def perceive(body: PerceiveRequest):
        if len(body.text) > max_chars:
            raise HTTPException(status_code=422, detail=f"invalid request: text is {len(body.text)} characters; limit {max_chars}")
        if not body.text.strip():
            raise HTTPException(status_code=422, detail="invalid request: text is blank")
        engine = holder.require()
        history = [h.model_dump() for h in body.history]
        perception, latency = await run_in_threadpool(
            engine.perceive, body.text, history, body.sender_id, body.message_id, body.turn_index
        )
        return {**perception.to_dict(), "latency_ms": round(latency, 2)}

    @app.get("/conversations/{sender_id}", dependencies=[Depends(authorise)])
    async def conversation(sender_id: str):
        engine = holder.require()
        state = await run_in_threadpool(engine.repository.conversation, sender_id)
        if state is None:
            raise HTTPException(status_code=404, detail=f"no conversation {sender_id!r}")
        return state

    def check_sender(sender_id: str) -> str:
        if not sender_id.strip() or len(sender_id) > 255:
            raise HTTPException(status_code=422, detail="invalid request: sender_id must be 1-255 characters, not blank")
        return sender_id

    @app.get("/users/{sender_id}/persona", response_model=PersonaResponse, dependencies=[Depends(authorise)])
    async def persona(sender_id: str):
        """What the assistant remembers the user said about themselves (empty list: nothing)."""
        engine = holder.require()
        facts = await run_in_threadpool(engine.repository.persona_facts, check_sender(sender_id))
        return {"sender_id": sender_id, "facts": facts}

    @app.delete("/users/{sender_id}/persona", response_model=PersonaForgetResponse, dependencies=[Depends(authorise)])
    async def forget_persona(sender_id: str):
        """Forget the user's persona facts; idempotent (a second call deletes 0)."""
        engine = holder.require()
        deleted = await run_in_threadpool(engine.repository.forget_persona, check_sender(sender_id))
        log.info("forgot %d persona facts of a sender on request", deleted)
        return {"sender_id": sender_id, "deleted": deleted}

    return app
