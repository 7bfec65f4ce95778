from __future__ import annotations

import pytest

from empathy_nlg.settings import ConfigError, load_settings


def test_defaults_validate_and_resolve_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    cfg = tmp_path / "engine.yml"
    cfg.write_text("state:\n  database_url: sqlite:///var/x.db\ndomain: domain.yml\n")
    s = load_settings(cfg)
    assert s["state"]["database_url"] == f"sqlite:///{tmp_path / 'var' / 'x.db'}"
    assert s["domain"] == str(tmp_path / "domain.yml")
    assert s["generation"]["generator"] == "nec"  # the better trained generator on the harness (docs/generators.md)
    assert s["generation"]["generators"]["prompted"]["decoding"]["max_new_tokens"] == 30
    assert s["generation"]["generators"]["nec"]["alpha"] == 0.7


def test_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@localhost/db")
    monkeypatch.setenv("EMPATHY_NLG_TOKEN", "s3cret")
    s = load_settings()
    assert s["state"]["database_url"] == "postgresql://u@localhost/db"
    assert s["server"]["token"] == "s3cret"


@pytest.mark.parametrize(
    "body, where",
    [
        ("server:\n  port: 99999\n", "server.port"),
        ("server:\n  prot: 80\n", "prot"),
        ("generation:\n  generated_responses: [utter_crisis_support]\n", "generation.generated_responses"),
        ("generation:\n  generator: ''\n", "generation.generator"),
    ],
)
def test_invalid_configs_name_the_problem(tmp_path, body, where):
    cfg = tmp_path / "engine.yml"
    cfg.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert where in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
