"""scripts/stack.py: the install's token reaches Rasa as one argument, whatever its first character.

A fresh clone's token began with "-" once (token_urlsafe's alphabet has it): ``rasa run --auth-token
-Kz…`` made argparse read an option, Rasa exited with code 2, and ``make chat`` never showed a prompt."""

from __future__ import annotations

import argparse

from stack import Stack, install_token


def test_a_token_that_begins_with_a_dash_reaches_rasa_whole(tmp_path, monkeypatch):
    stack = Stack(engine_port=1, actions_port=2, rasa_port=3, logs=tmp_path / "logs", token="-Kz_abc-123")
    spawned = {}
    monkeypatch.setattr(stack, "_spawn", lambda name, cmd, **kw: spawned.setdefault(name, cmd))
    stack.start_rasa(tmp_path / "model.tar.gz", tmp_path / "endpoints.yml")
    cmd = spawned["rasa"]
    parser = argparse.ArgumentParser()  # the same option as `rasa run`
    parser.add_argument("-t", "--auth-token")
    known, _ = parser.parse_known_args(cmd[2:])
    assert known.auth_token == "-Kz_abc-123"


def test_install_tokens_never_look_like_an_option(tmp_path, monkeypatch):
    monkeypatch.delenv("EMPATHY_NLG_TOKEN", raising=False)
    tokens = [install_token(tmp_path / f"t{i}" / "engine.token") for i in range(300)]
    assert len(set(tokens)) == 300 and not [t for t in tokens if t.startswith("-")]
    assert install_token(tmp_path / "t0" / "engine.token") == tokens[0]  # read back, not made again
