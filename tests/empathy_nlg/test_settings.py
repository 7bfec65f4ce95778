from __future__ import annotations

import json

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


def test_one_reader_for_every_config_file(tmp_path):
    """read_config_file: YAML or JSON, empty → {}, every failure a ConfigError (a ValueError) that names the file."""
    from empathy_nlg.settings import ConfigError, read_config_file

    (tmp_path / "a.yml").write_text("generation:\n  generator: nec\n")
    (tmp_path / "b.json").write_text('{"generators": {"nec": {}}}')
    (tmp_path / "empty.yml").write_text("")
    assert read_config_file(tmp_path / "a.yml") == {"generation": {"generator": "nec"}}
    assert read_config_file(tmp_path / "b.json") == {"generators": {"nec": {}}}
    assert read_config_file(tmp_path / "empty.yml") == {}
    for name, text, message in [("bad.yml", "a: [1,\n", "not valid YAML"), ("bad.json", "{", "not valid JSON"),
                                ("list.yml", "- 1\n", "top level must be a mapping")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message) as err:
            read_config_file(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="does not exist"):
        read_config_file(tmp_path / "missing.yml")


def test_packaged_defaults_are_read_once_and_handed_out_as_copies(monkeypatch):
    from empathy_nlg.settings import load_settings, packaged_defaults

    monkeypatch.delenv("EMPATHY_NLG_GENERATOR", raising=False)
    first = packaged_defaults()
    first["generation"]["generator"] = "changed by a caller"
    assert packaged_defaults()["generation"]["generator"] == "nec"
    assert load_settings()["generation"]["generator"] == "nec"


def test_the_typed_settings_mirror_the_schema_and_round_trip(tmp_path, monkeypatch):
    """EngineSettings: every key the schema allows has a typed field (the packaged defaults, which
    set them all, validate and dump back unchanged); a key the model does not know is refused."""
    import pydantic

    from empathy_nlg.settings import SCHEMA_FILE, EngineSettings, packaged_defaults

    monkeypatch.delenv("DATABASE_URL", raising=False)
    typed = EngineSettings.load()
    assert typed.as_dict() == load_settings()
    assert typed.server.nlg_queue == 8 and typed.generation.section()["alpha"] == 0.7
    assert typed.generation.conversation.exemplars.k == 3 and typed.safety.followup_turns == 3
    schema = json.loads(SCHEMA_FILE.read_text())
    for section in ("server", "state", "perception", "safety", "persona"):
        allowed = set(schema["properties"][section]["properties"])
        assert allowed == set(getattr(EngineSettings.model_fields[section].annotation, "model_fields")), section
    conversation = schema["properties"]["generation"]["properties"]["conversation"]["properties"]
    assert set(conversation) == set(EngineSettings.model_fields["generation"].annotation.model_fields["conversation"].annotation.model_fields)
    with pytest.raises(pydantic.ValidationError):
        EngineSettings.model_validate({**packaged_defaults(), "server": {**packaged_defaults()["server"], "colour": "red"}})
    cfg = tmp_path / "engine.yml"
    cfg.write_text("server:\n  port: 6000\n")
    settings, found = EngineSettings.find(cfg)
    assert found == cfg and settings.server.port == 6000
