from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from empathy_nlg.api.app import create_app
from empathy_nlg.domain import DomainResponses
from empathy_nlg.engine import EmpathyEngine
from empathy_nlg.settings import load_settings
from empathy_nlg.state.repository import StateRepository
from tests.empathy_nlg.conftest import EchoGenerator, KeywordPerceiver


def build(domain_file, sqlite_url, **server):
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file), "server": server})

    def loader():
        repo = StateRepository(sqlite_url)
        repo.migrate()
        return EmpathyEngine(settings, perceiver=KeywordPerceiver(), generator=EchoGenerator(), repository=repo, domain=DomainResponses.load(domain_file))

    app = create_app(settings, loader)
    return app


@pytest.fixture
def client(domain_file, sqlite_url):
    app = build(domain_file, sqlite_url, max_body_bytes=4096, max_message_chars=200)
    with TestClient(app) as c:
        app.state.holder.wait(30)
        yield c


def rasa_body(response="utter_empathize", text="I had an awful day", sender="s1"):
    return {
        "response": response,
        "id": None,
        "arguments": {},
        "tracker": {"sender_id": sender, "slots": {}, "latest_message": {}, "events": [{"event": "user", "text": text, "message_id": "m1", "parse_data": {}}]},
        "channel": {"name": "collector"},
    }


def rows(app):
    return app.state.holder.engine.repository.count_rows()


def test_health_ready_and_openapi(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["models"]["generator"] == "echo"
    spec = client.get("/openapi.json").json()
    assert {"/nlg", "/perceive", "/health"} <= set(spec["paths"])


def test_health_is_503_while_loading(domain_file, sqlite_url):
    import threading

    gate = threading.Event()
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file)})
    app = create_app(settings, lambda: (gate.wait(10), None)[1])
    with TestClient(app) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert c.post("/nlg", json=rasa_body()).status_code == 503
        gate.set()


def test_health_reports_load_error(domain_file, sqlite_url):
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file)})

    def broken():
        raise FileNotFoundError("no perception artefacts")

    app = create_app(settings, broken)
    with TestClient(app) as c:
        app.state.holder.wait(10)
        r = c.get("/health")
        assert r.status_code == 503 and "no perception artefacts" in r.json()["detail"]


def test_nlg_follows_rasa_protocol(client):
    r = client.post("/nlg", json=rasa_body())
    assert r.status_code == 200
    body = r.json()
    assert body["text"] == "I hear that you feel sad."
    assert {"emotion", "causes", "cm", "knowledge", "generator", "latency_ms"} <= set(body["custom"])
    # the optional NLG fields Rasa knows are present and empty (Rasa validates them as nullable)
    assert all(body[k] is None for k in ("buttons", "image", "elements", "attachment"))


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda b: b.pop("tracker"), "tracker"),
        (lambda b: b.pop("response"), "response"),
        (lambda b: b["tracker"].pop("sender_id"), "tracker.sender_id"),
        (lambda b: b.__setitem__("response", ""), "response"),
        (lambda b: b["tracker"].__setitem__("events", "nope"), "tracker.events"),
        # the crash: a numeric user text reached the engine and raised AttributeError (500)
        (lambda b: b["tracker"]["events"][-1].__setitem__("text", 42), "events[0].text"),
        (lambda b: b["tracker"]["events"][-1].__setitem__("message_id", ["x"]), "message_id"),
        (lambda b: b["tracker"]["events"][-1].__setitem__("parse_data", "nope"), "parse_data"),
    ],
)
def test_malformed_nlg_bodies_are_422_and_persist_nothing(client, mutate, where):
    body = rasa_body()
    mutate(body)
    r = client.post("/nlg", json=body)
    assert r.status_code == 422
    assert where in r.json()["error"]
    assert rows(client.app) == {"conversations": 0, "turns": 0, "replies": 0}


def test_not_json_and_unknown_response(client):
    r = client.post("/nlg", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/nlg", json=rasa_body(response="utter_does_not_exist"))
    assert r.status_code == 404 and "utter_does_not_exist" in r.json()["error"]
    assert rows(client.app)["replies"] == 0


def test_body_size_limit(client):
    r = client.post("/nlg", json=rasa_body(text="x" * 5000))
    assert r.status_code == 413
    assert rows(client.app)["turns"] == 0


def test_too_many_tracker_events_and_a_chunked_body_over_the_limit_get_413(domain_file, sqlite_url):
    app = build(domain_file, sqlite_url, max_body_bytes=4096, max_events=3)
    with TestClient(app) as client:
        app.state.holder.wait(30)
        body = rasa_body()
        body["tracker"]["events"] = [{"event": "user", "text": f"msg {i}", "message_id": f"m{i}", "parse_data": {}} for i in range(4)]
        r = client.post("/nlg", json=body)
        assert r.status_code == 413 and "4 events; limit 3" in r.json()["error"]
        # a chunked upload has no content-length: what arrives is measured
        chunks = iter([b'{"text": "', b"x" * 3000, b"x" * 3000, b'"}'])
        r = client.post("/perceive", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "4096 bytes" in r.json()["error"]
        r = client.post("/perceive", content=iter([b'{"text": "', b"a small chunked message", b'"}']),
                        headers={"content-type": "application/json"})
        assert r.status_code == 200
        assert rows(app) == {"conversations": 0, "turns": 0, "replies": 0}


def test_an_unexpected_failure_is_a_500_that_names_no_detail_and_writes_nothing(domain_file, sqlite_url, monkeypatch):
    app = build(domain_file, sqlite_url)
    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.holder.wait(30)
        repository = app.state.holder.engine.repository

        def broken(*_args, **_kwargs):
            raise RuntimeError("disk full at /var/secret/path")

        monkeypatch.setattr(repository, "record_reply", broken)
        r = client.post("/nlg", json=rasa_body())
        assert r.status_code == 500 and r.json() == {"error": "internal error: RuntimeError"}
        assert "secret" not in r.text and "Traceback" not in r.text
        assert rows(app) == {"conversations": 0, "turns": 0, "replies": 0}


def test_an_unreachable_state_database_is_a_503_with_retry_after_and_writes_nothing(domain_file, sqlite_url, monkeypatch):
    """A PostgreSQL restart: the turn cannot be stored, so it is refused in a way the agent retries or
    answers from the domain — never a 500, and the statement's parameters (the user's text) stay out."""
    from sqlalchemy.exc import OperationalError

    app = build(domain_file, sqlite_url)
    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.holder.wait(30)
        repository = app.state.holder.engine.repository

        def down(*_args, **_kwargs):
            raise OperationalError("INSERT INTO empathy_turns (user_text) VALUES (%s)", ("I had an awful day",),
                                   Exception("server closed the connection unexpectedly"))

        monkeypatch.setattr(repository, "record_reply", down)
        monkeypatch.setattr(repository, "record_turn", down)
        for path, body in (("/nlg", rasa_body()), ("/perceive", {"text": "I had an awful day", "sender_id": "p9"})):
            r = client.post(path, json=body)
            assert r.status_code == 503 and r.headers["retry-after"] == "2", (path, r.text)
            assert r.json() == {"error": "the state database is unavailable just now; retry shortly"}
            assert "awful" not in r.text and "INSERT" not in r.text
        monkeypatch.undo()
        assert rows(app) == {"conversations": 0, "turns": 0, "replies": 0}
        assert client.post("/nlg", json=rasa_body()).status_code == 200  # and back when the database is


def test_perceive(client):
    r = client.post("/perceive", json={"text": "I got promoted!", "history": [{"role": "user", "text": "hi"}, {"role": "bot", "text": "hello"}], "sender_id": "p1", "turn_index": 1})
    assert r.status_code == 200
    body = r.json()
    assert body["emotion"] == "proud" and body["polarity"] == "positive" and body["cm_plan"] == ["ER", "EX"]
    assert body["causes"][0]["index"] == 2
    stored = client.get("/conversations/p1").json()["turns"]
    assert [(t["turn_index"], t["user_text"], t["emotion"]) for t in stored] == [(0, "I got promoted!", "proud")]
    assert client.get("/conversations/nobody").status_code == 404


@pytest.mark.parametrize(
    "body, status",
    [({"text": ""}, 422), ({"text": "   "}, 422), ({"text": "x" * 201}, 422), ({"text": "hi", "history": [{"role": "alien", "text": "x"}]}, 422), ({}, 422)],
)
def test_perceive_rejects_bad_input(client, body, status):
    r = client.post("/perceive", json=body)
    assert r.status_code == status and r.json()["error"]


def test_token_required_when_configured(domain_file, sqlite_url):
    app = build(domain_file, sqlite_url, token="s3cret")
    with TestClient(app) as c:
        app.state.holder.wait(30)
        assert c.post("/perceive", json={"text": "hi"}).status_code == 401
        assert c.post("/perceive", json={"text": "hi"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/perceive", json={"text": "hi"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/perceive?token=s3cret", json={"text": "hi"}).status_code == 200  # how Rasa sends `token:`
        assert c.get("/health").status_code == 200  # health stays open for probes


def test_nlg_queue_is_bounded_with_retry_after_and_health_shows_it(domain_file, sqlite_url):
    """server.nlg_queue: one request answered plus nlg_queue waiting; one more gets 503 with
    Retry-After and writes nothing; /health reports the queue; leaving frees a place."""
    app = build(domain_file, sqlite_url, nlg_queue=2)
    with TestClient(app) as c:
        app.state.holder.wait(30)
        admission = app.state.admission
        assert c.get("/health").json()["queue"] == {"in_flight": 0, "limit": 3, "refused": 0, "expired": 0}
        assert c.post("/nlg", json=rasa_body()).status_code == 200
        before = rows(app)
        for _ in range(3):  # three requests inside the engine (as if slow ones were in progress)
            assert admission.enter()
        r = c.post("/nlg", json=rasa_body(sender="s2"))
        assert r.status_code == 503 and "engine busy" in r.json()["error"]
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert rows(app) == before
        assert c.get("/health").json()["queue"] == {"in_flight": 3, "limit": 3, "refused": 1, "expired": 0}
        admission.leave(0.5)
        assert c.post("/nlg", json=rasa_body(sender="s2")).status_code == 200
        assert c.get("/health").json()["queue"]["in_flight"] == 2


def test_admission_retry_after_grows_with_the_queue():
    from empathy_nlg.api.app import Admission

    a = Admission(4)
    assert a.retry_after() == 1  # nothing measured, nothing waiting
    for _ in range(3):
        assert a.enter()
    a.leave(2.0)  # one answered in 2 s; two still inside
    assert a.retry_after() == 4
    assert a.enter() and a.enter() and not a.enter()
    assert a.snapshot() == {"in_flight": 4, "limit": 4, "refused": 1, "expired": 0}


def test_a_request_its_client_stopped_waiting_for_is_a_504_that_stores_nothing(domain_file, sqlite_url):
    """X-Request-Timeout (the agent's NLG timeout): a reply finished after it, less
    server.deadline_margin_s, is thrown away (the agent has answered from the domain), so the state
    never holds a reply the user did not see; a request already past it when its turn comes (a long
    queue wait) is not even started. Within the time it is answered and stored as usual."""
    import time

    app = build(domain_file, sqlite_url, deadline_margin_s=0.0)
    with TestClient(app) as c:
        app.state.holder.wait(30)
        engine = app.state.holder.engine
        made = []
        echo = engine.generator.generate

        def slow(requests):
            time.sleep(0.6)
            made.extend(requests)
            return echo(requests)

        engine.generator.generate = slow
        r = c.post("/nlg", json=rasa_body(), headers={"X-Request-Timeout": "0.3"})
        assert r.status_code == 504, r.text
        assert "deadline passed while the reply was made" in r.json()["error"] and "nothing was stored" in r.json()["error"]
        assert made  # it was made, and dropped
        assert rows(app) == {"conversations": 0, "turns": 0, "replies": 0}
        assert c.get("/health").json()["queue"] == {"in_flight": 0, "limit": 9, "refused": 0, "expired": 1}
        r = c.post("/nlg", json=rasa_body(), headers={"X-Request-Timeout": "30"})
        assert r.status_code == 200 and r.json()["text"] == "I hear that you feel sad."
        assert rows(app) == {"conversations": 1, "turns": 1, "replies": 1}

    app = build(domain_file, sqlite_url.replace(".db", "-queued.db"), deadline_margin_s=5.0)
    with TestClient(app) as c:
        app.state.holder.wait(30)
        made = []
        echo = app.state.holder.engine.generator.generate
        app.state.holder.engine.generator.generate = lambda requests: made.extend(requests) or echo(requests)
        # 2 s of patience less a 5 s margin: past the deadline before the work starts
        r = c.post("/nlg", json=rasa_body(), headers={"X-Request-Timeout": "2"})
        assert r.status_code == 504 and "before the request was started" in r.json()["error"]
        assert made == [] and rows(app) == {"conversations": 0, "turns": 0, "replies": 0}


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan", "inf"])
def test_a_malformed_request_timeout_header_is_a_422(client, value):
    r = client.post("/nlg", json=rasa_body(), headers={"X-Request-Timeout": value})
    assert r.status_code == 422 and "X-Request-Timeout must be a positive number of seconds" in r.json()["error"]
    assert rows(client.app) == {"conversations": 0, "turns": 0, "replies": 0}
