"""Agent tests run in the Rasa environment (Python 3.10). A tiny threaded HTTP server plays the
engine's API for these unit tests; the end-to-end tests use the real engine."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List

import pytest

from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource


class FakeEngine:
    def __init__(self) -> None:
        self.requests: List[Dict[str, Any]] = []
        self.handler: Callable[[str, Dict[str, Any]], tuple] = lambda path, body: (200, perception())
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def _handler_class(self):
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                engine.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                status, payload = engine.handler(self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()


def perception(emotion: str = "sad", crisis: bool = False) -> Dict[str, Any]:
    return {
        "emotion": emotion,
        "emotion_probs": {emotion: 0.7, "lonely": 0.2},
        "emotion_top_k": [{"label": emotion, "prob": 0.7}, {"label": "lonely", "prob": 0.2}],
        "polarity": "negative",
        "polarity_prob": 0.9,
        "causes": [{"index": 0, "text": "my dog died", "score": 0.8, "spans": [[3, 11]]}],
        "cm": {"ER": 0.8, "IP": 0.2, "EX": 0.7},
        "cm_plan": ["ER", "EX"],
        "crisis": crisis,
        "crisis_score": 0.97 if crisis else 0.02,
        "crisis_reasons": ["suicidal-intent"] if crisis else [],
        "models": {},
        "latency_ms": 5.0,
    }


@pytest.fixture
def fake_engine():
    engine = FakeEngine()
    yield engine
    engine.close()


@pytest.fixture
def graph_context(tmp_path):
    storage = LocalModelStorage(tmp_path / "storage")
    resource = Resource("perception")
    context = ExecutionContext(GraphSchema({}), node_name="perception_node")
    return storage, resource, context


@pytest.fixture(autouse=True)
def fresh_clients():
    from agent import engine_component

    engine_component._CLIENTS.clear()
    yield
    engine_component._CLIENTS.clear()
