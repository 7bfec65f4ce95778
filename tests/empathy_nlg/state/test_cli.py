"""``empathy-nlg db`` acts on the database ``serve`` uses (the engine settings), not only $DATABASE_URL."""

from __future__ import annotations

import argparse

from empathy_nlg.state import cli as db_cli


def _args(*argv):
    parser = argparse.ArgumentParser()
    db_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_db_upgrade_uses_the_engine_yml_that_serve_would_read(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    (tmp_path / "engine.yml").write_text("state:\n  database_url: sqlite:///var/state.db\n")
    monkeypatch.chdir(tmp_path)
    assert db_cli.run(_args("upgrade")) == 0
    assert (tmp_path / "var" / "state.db").is_file()  # relative to the config file, as serve resolves it
    assert "schema revision:" in capsys.readouterr().out


def test_environment_then_url_override_the_file(tmp_path, monkeypatch):
    cfg = tmp_path / "other.yml"
    cfg.write_text("state:\n  database_url: sqlite:///from_file.db\n")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'from_env.db'}")
    assert db_cli.resolve_url(_args("current", "--config", str(cfg))).endswith("from_env.db")
    assert db_cli.resolve_url(_args("current", "--config", str(cfg), "--url", f"sqlite:///{tmp_path / 'x.db'}")).endswith("x.db")
    monkeypatch.delenv("DATABASE_URL")
    assert db_cli.resolve_url(_args("current", "--config", str(cfg))) == f"sqlite:///{(tmp_path / 'from_file.db').resolve()}"
