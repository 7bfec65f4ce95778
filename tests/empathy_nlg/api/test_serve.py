"""``empathy-nlg serve``: secure by default (no token, no listening beyond loopback)."""

from __future__ import annotations

import argparse

import pytest

from empathy_nlg.api import serve


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.7", True), ("localhost", True), ("::1", True),
                                            ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False),
                                            ("engine.internal", False)])
def test_loopback_hosts(host, loopback):
    assert serve.is_loopback(host) is loopback


@pytest.fixture
def started(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr("empathy_nlg.api.app.create_app", lambda settings: settings)
    monkeypatch.delenv("EMPATHY_NLG_TOKEN", raising=False)
    return calls


def test_the_engine_refuses_to_listen_beyond_loopback_without_a_token(started, capsys, monkeypatch, tmp_path):
    config = tmp_path / "engine.yml"
    config.write_text("state: {database_url: 'sqlite:///x.db'}\n")
    assert serve.run(argparse.Namespace(config=config, host="0.0.0.0", port=5999)) == 2
    assert started == [] and "without a token" in capsys.readouterr().err
    assert serve.run(argparse.Namespace(config=config, host="127.0.0.1", port=5999)) == 0  # loopback: allowed
    monkeypatch.setenv("EMPATHY_NLG_TOKEN", "s3cret")
    assert serve.run(argparse.Namespace(config=config, host="0.0.0.0", port=5999)) == 0
    assert [c["host"] for c in started] == ["127.0.0.1", "0.0.0.0"]
