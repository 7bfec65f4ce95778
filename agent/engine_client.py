"""A small, synchronous HTTP client for the empathy engine, with timeouts, retries and a breaker.

NLU components run synchronously inside Rasa's graph (like Rasa's own DucklingEntityExtractor),
so this uses ``requests``. When the engine is unreachable, calls fail fast for ``cooldown_s``
seconds instead of making every message wait for a timeout; callers degrade gracefully.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Dict, List, Optional

import requests

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:5056"


class EngineUnavailable(RuntimeError):
    """The engine could not answer (down, slow, or it refused the request)."""


class EngineClient:
    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        timeout_s: float = 5.0,
        retries: int = 1,
        cooldown_s: float = 10.0,
    ) -> None:
        self.url = (url or os.environ.get("EMPATHY_ENGINE_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("EMPATHY_NLG_TOKEN")
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.cooldown_s = float(cooldown_s)
        self._session = requests.Session()
        self._down_until = 0.0
        self._lock = threading.Lock()

    def _headers(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def post(self, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        if time.monotonic() < self._down_until:
            raise EngineUnavailable(f"engine at {self.url} marked unavailable (cooling down)")
        last_error: Optional[str] = None
        for attempt in range(self.retries + 1):
            try:
                resp = self._session.post(self.url + path, json=body, headers=self._headers(), timeout=self.timeout_s)
            except requests.RequestException as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code == 200:
                with self._lock:
                    self._down_until = 0.0
                return resp.json()
            if resp.status_code in (502, 503, 504):  # loading or overloaded: worth a retry
                last_error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                continue
            raise EngineUnavailable(f"engine refused {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        with self._lock:
            self._down_until = time.monotonic() + self.cooldown_s
        raise EngineUnavailable(f"engine at {self.url} did not answer {path}: {last_error}")

    def delete(self, path: str) -> Dict[str, Any]:
        """``DELETE path``: one try (a deletion is asked for by a person, who gets an answer at once)."""
        try:
            resp = self._session.delete(self.url + path, headers=self._headers(), timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise EngineUnavailable(f"engine at {self.url} did not answer DELETE {path}: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise EngineUnavailable(f"engine refused DELETE {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def forget_persona(self, sender_id: str) -> int:
        """Forget the persona facts the engine remembers for ``sender_id``; returns how many it deleted."""
        from urllib.parse import quote

        return int(self.delete(f"/users/{quote(sender_id, safe='')}/persona").get("deleted", 0))

    def perceive(
        self,
        text: str,
        history: List[Dict[str, str]],
        sender_id: Optional[str] = None,
        message_id: Optional[str] = None,
        turn_index: Optional[int] = None,
    ) -> Dict[str, Any]:
        body: Dict[str, Any] = {"text": text, "history": history}
        if sender_id is not None:
            body.update(sender_id=sender_id, message_id=message_id, turn_index=turn_index)
        return self.post("/perceive", body)
