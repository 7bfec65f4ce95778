"""GET/DELETE /users/{sender_id}/persona through the app, with the engine's token."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.empathy_nlg.api.test_app import build, rasa_body, rows


@pytest.fixture
def client(domain_file, sqlite_url):
    app = build(domain_file, sqlite_url, token="s3cret")
    with TestClient(app) as c:
        app.state.holder.wait(30)
        yield c


AUTH = {"Authorization": "Bearer s3cret"}


def test_persona_is_listed_and_forgotten_and_nothing_else_is_lost(client):
    r = client.post("/nlg", json=rasa_body(text="I work as a nurse and my dog is called Max", sender="s1"), headers=AUTH)
    assert r.status_code == 200
    r = client.get("/users/s1/persona", headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["sender_id"] == "s1"
    assert [f["fact"] for f in body["facts"]] == ["I work as a nurse", "My dog is called Max"]
    assert body["facts"][0]["source_text"] == "I work as a nurse and my dog is called Max"
    assert body["facts"][0]["message_id"] == "m1" and body["facts"][0]["created_at"]
    before = rows(client.app)

    r = client.delete("/users/s1/persona", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"sender_id": "s1", "deleted": 2}
    assert client.get("/users/s1/persona", headers=AUTH).json()["facts"] == []
    assert rows(client.app) == before  # conversations, turns and replies stay
    assert client.get("/conversations/s1", headers=AUTH).json()["turns"][0]["replies"]
    assert client.delete("/users/s1/persona", headers=AUTH).json()["deleted"] == 0  # idempotent


def test_unknown_user_has_no_persona(client):
    r = client.get("/users/nobody/persona", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"sender_id": "nobody", "facts": []}


def test_persona_routes_need_the_token(client):
    for method in ("get", "delete"):
        r = getattr(client, method)("/users/s1/persona")
        assert r.status_code == 401 and r.json()["error"] == "missing or wrong token"
        assert getattr(client, method)("/users/s1/persona", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/users/s1/persona?token=s3cret").status_code == 200  # Rasa's ?token= form


def test_bad_sender_ids_get_a_clear_error(client):
    r = client.get("/users/%20%20/persona", headers=AUTH)
    assert r.status_code == 422 and "sender_id" in r.json()["error"]
    r = client.delete("/users/" + "x" * 300 + "/persona", headers=AUTH)
    assert r.status_code == 422 and "sender_id" in r.json()["error"]


def test_persona_routes_are_in_the_openapi_schema(client):
    spec = client.get("/openapi.json").json()
    assert {"get", "delete"} <= set(spec["paths"]["/users/{sender_id}/persona"])


def test_persona_routes_answer_503_while_loading(domain_file, sqlite_url):
    import threading

    from empathy_nlg.api.app import create_app
    from empathy_nlg.settings import load_settings

    gate = threading.Event()
    settings = load_settings(overrides={"state": {"database_url": sqlite_url}, "domain": str(domain_file)})
    app = create_app(settings, lambda: (gate.wait(10), None)[1])
    with TestClient(app) as c:
        assert c.get("/users/s1/persona").status_code == 503
        assert c.delete("/users/s1/persona").status_code == 503
        gate.set()
