"""``empathy-nlg bench-serve`` against a real engine app served over HTTP (uvicorn in a thread, the
unit-test stand-ins for the models: ``KeywordPerceiver`` and ``EchoGenerator``, as in the API tests)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from empathy_nlg.api.app import create_app
from empathy_nlg.cli import main
from empathy_nlg.domain import DomainResponses
from empathy_nlg.engine import EmpathyEngine
from empathy_nlg.evaluation import bench_serve
from empathy_nlg.settings import load_settings
from empathy_nlg.state.repository import StateRepository
from tests.empathy_nlg.conftest import EchoGenerator, KeywordPerceiver
from tests.empathy_nlg.generators.knowledge_fixtures import write_ed


class GatedGenerator(EchoGenerator):
    """Once armed, holds each batch until the engine has refused a request (or 10 s passed): while
    it holds one, a full queue is certain, so the 503 tests do not depend on timing."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.admission = None

    def generate(self, requests):
        deadline = time.monotonic() + 10
        while self.armed and self.admission.refused == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        return super().generate(requests)


@pytest.fixture
def serve(domain_file, sqlite_url, monkeypatch, tmp_path):
    """``serve(generator=None, **server_settings)`` → (base URL, app): the engine app on a real socket."""
    import uvicorn

    monkeypatch.delenv("EMPATHY_NLG_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # no var/engine.token of the checkout is picked up
    started = []

    def start(generator=None, **server):
        settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file), "server": server})

        def loader():
            repo = StateRepository(sqlite_url)
            repo.migrate()
            return EmpathyEngine(settings, perceiver=KeywordPerceiver(), generator=generator or EchoGenerator(),
                                 repository=repo, domain=DomainResponses.load(domain_file))

        app = create_app(settings, loader)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        server_ = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=server_.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        started.append((server_, thread, sock))
        deadline = time.monotonic() + 20
        while not server_.started and time.monotonic() < deadline:
            time.sleep(0.02)
        app.state.holder.wait(30)
        assert server_.started and app.state.holder.engine is not None
        return f"http://127.0.0.1:{sock.getsockname()[1]}", app

    yield start
    for server_, thread, sock in started:
        server_.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def data(tmp_path):
    return write_ed(tmp_path / "ed.jsonl")


def bench(url, data, *extra):
    return main(["bench-serve", "--url", url, "--data", str(data), *extra])


def test_counts_latencies_batches_and_one_json_row_per_level(serve, data, tmp_path, capsys):
    url, app = serve()
    out = tmp_path / "bench.json"
    assert bench(url, data, "--concurrency", "1,4", "--requests", "6", "--warmup", "1", "--json", str(out)) == 0
    printed = capsys.readouterr()
    rows = json.loads(out.read_text())["levels"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    for row in rows:
        assert row["sent"] == 6 and row["ok"] + row["503"] + row["errors"] == row["sent"]
        assert row["ok"] == 6 and row["errors"] == 0  # an echo generator and a queue of 9: nothing refused
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
        assert row["replies_per_s"] > 0 and row["generators"] == {"echo": 6}
        batching = row["engine"]["batching"]
        assert 1 <= batching["batches"] <= 6 and batching["mean_size"] * batching["batches"] == pytest.approx(6)
        assert row["engine"]["queue"] == {"limit": 9, "in_flight_after": 0, "refused": 0}
    assert rows[0]["engine"]["batching"]["batches"] == 6 and rows[0]["engine"]["batching"]["largest"] == 1  # one client
    # each client is its own conversation: the warm-up's, the 1-client level's and the 4 of the next
    assert app.state.holder.engine.repository.count_rows()["conversations"] == 1 + 1 + 4
    header = next(line for line in printed.out.splitlines() if "p50 ms" in line)
    assert header.split()[:5] == ["at", "once", "sent", "ok", "503"] and "refused" in header
    assert "[4 at once] 6/6" in printed.err  # progress on stderr


def test_an_unreachable_engine_is_one_line_and_a_nonzero_exit(data, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert bench(f"http://127.0.0.1:{port}", data, "--concurrency", "1", "--requests", "2") == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no engine answers at" in err and "Traceback" not in err


def test_a_full_queue_is_counted_as_503s_with_retry_after(serve, data, tmp_path):
    """server.nlg_queue: 0 → one request inside the engine; the gated generator holds it until the
    engine has refused one, so with 4 clients at once some 503s are certain, and counted."""
    gen = GatedGenerator()
    url, app = serve(generator=gen, nlg_queue=0)
    gen.admission, gen.armed = app.state.admission, True
    out = tmp_path / "bench.json"
    assert bench(url, data, "--concurrency", "4", "--requests", "8", "--warmup", "0", "--json", str(out)) == 0
    (row,) = json.loads(out.read_text())["levels"]
    assert row["ok"] + row["503"] + row["errors"] == row["sent"] == 8
    assert row["503"] >= 1 and row["ok"] >= 1 and row["errors"] == 0 and row["retried"] == 0
    assert row["engine"]["queue"]["refused"] == row["503"] and row["engine"]["queue"]["limit"] == 1
    assert row["503_without_retry_after"] == 0 and sum(row["retry_after_s"].values()) == row["503"]


def test_retry_honours_retry_after_and_counts_what_it_retried(serve, data, tmp_path):
    gen = GatedGenerator()
    url, app = serve(generator=gen, nlg_queue=0)
    gen.admission, gen.armed = app.state.admission, True
    out = tmp_path / "bench.json"
    assert bench(url, data, "--concurrency", "2", "--requests", "2", "--warmup", "0", "--retry", "--json", str(out)) == 0
    (row,) = json.loads(out.read_text())["levels"]
    assert row["ok"] == row["sent"] == 2 and row["503"] == 0 and row["retried"] >= 1
    assert row["max_ms"] >= 1000  # the retried request waited its Retry-After (≥ 1 s)


def test_the_token_is_sent_as_a_bearer_header(serve, data, tmp_path, capsys):
    url, _ = serve(token="s3cret")
    assert bench(url, data, "--concurrency", "1", "--requests", "1", "--warmup", "1") == 3
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "--token" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "tok").write_text("s3cret\n")
    assert bench(url, data, "--concurrency", "1", "--requests", "1", "--warmup", "1", "--token-file", str(tmp_path / "tok")) == 0
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "engine.token").write_text("s3cret\n")  # make serve's file, from the working directory
    assert bench(url, data, "--concurrency", "1", "--requests", "1", "--warmup", "0") == 0


def test_bad_options_are_one_line_errors(data, capsys):
    assert bench("http://127.0.0.1:1", data, "--concurrency", "0") == 2
    assert bench("http://127.0.0.1:1", data, "--concurrency", "1,x") == 2
    assert "--concurrency" in capsys.readouterr().err


def test_batching_delta_from_two_health_readings():
    before = {"batches": 4, "mean_size": 1.0, "largest": 1}
    after = {"batches": 6, "mean_size": 2.0, "largest": 4}
    assert bench_serve.batching_delta(before, after) == {"batches": 2, "mean_size": 4.0, "largest": 4, "largest_since_start": 4}
    same = bench_serve.batching_delta(after, {"batches": 8, "mean_size": 2.0, "largest": 4})
    assert same["batches"] == 2 and same["largest"] is None and same["largest_at_most"] == 4
    ones = bench_serve.batching_delta({"batches": 1, "mean_size": 1.0, "largest": 1},
                                      {"batches": 7, "mean_size": 1.0, "largest": 1})
    assert ones["largest"] == 1 and ones["mean_size"] == 1.0  # every batch of one: the largest is known
    assert bench_serve.batching_delta(before, {"batches": 1000, "mean_size": 2.0, "largest": 4})["batches"] is None
    assert bench_serve.percentile([3.0, 1.0, 2.0], 50) == 2.0 and bench_serve.percentile([], 95) is None


def test_batching_delta_is_exact_with_the_engines_counts_by_size():
    before = {"batches": 1000, "mean_size": 2.0, "largest": 8, "sizes_since_start": {"1": 700, "8": 300}}
    after = {"batches": 1000, "mean_size": 2.1, "largest": 8, "sizes_since_start": {"1": 702, "3": 4, "8": 300}}
    # past the engine's 1,000-batch window the counts by size still give the level's own batches
    assert bench_serve.batching_delta(before, after) == {"batches": 6, "mean_size": 2.33, "largest": 3, "largest_since_start": 8}
    assert bench_serve.batching_delta(after, after) == {"batches": 0, "mean_size": None, "largest": None}
