"""Engine configuration: packaged defaults ← a YAML file ← environment, validated by a JSON schema.

``load_settings(path)`` returns a plain nested dict. Relative paths in the file (``domain``,
SQLite files) are resolved against the config file's folder, so the engine behaves the same
from any working directory.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from empathy_nlg.paths import CONFIG_DIR

DEFAULTS_FILE = CONFIG_DIR / "engine.default.yml"
SCHEMA_FILE = CONFIG_DIR / "engine.schema.json"

ENV_OVERRIDES = {
    "DATABASE_URL": ("state", "database_url"),
    "EMPATHY_NLG_TOKEN": ("server", "token"),
    "EMPATHY_NLG_GENERATOR": ("generation", "generator"),
    "EMPATHY_NLG_DEVICE": ("perception", "device"),
}


class ConfigError(ValueError):
    """The engine configuration is invalid; the message says where."""


def _merge(base: Dict[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: Path | str) -> Dict[str, Any]:
    """A YAML (or ``.json``) config file as a mapping — the one reader of the engine, train,
    evaluate and converse-eval configs. An empty file is ``{}``; a missing or unreadable file, a
    syntax error (with its line) or a top level that is not a mapping is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    is_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {exc}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


@functools.lru_cache(maxsize=1)
def _packaged_defaults() -> Dict[str, Any]:
    return read_config_file(DEFAULTS_FILE)


def packaged_defaults() -> Dict[str, Any]:
    """The engine's packaged defaults (``engine.default.yml``), read once; a fresh copy each call.
    What a command that has no engine config of its own falls back to (the harness's generator
    sections, the crisis encoder of ``train-perception`` / ``bench-perceive``)."""
    return copy.deepcopy(_packaged_defaults())


def schema_errors(schema_file: Path, data: Mapping[str, Any]) -> List[str]:
    """``"key.path: message"`` for each violation of the JSON schema in ``schema_file`` (none: [])."""
    import jsonschema

    schema = json.loads(Path(schema_file).read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    return [f"{'.'.join(str(p) for p in e.path) or '(top level)'}: {e.message}" for e in errors]


def validate(settings: Mapping[str, Any], source: str = "config") -> None:
    lines = schema_errors(SCHEMA_FILE, settings)
    if lines:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines))


def _resolve_sqlite(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url


def default_config_path() -> Optional[Path]:
    """The project's ``engine.yml``: in the working directory, else next to the package (the
    repository checkout); ``None`` when neither exists (packaged defaults). Every command that reads
    the engine settings (``serve``, ``db``, ``converse-eval``) resolves its default the same way, so
    they act on the same database and models."""
    from empathy_nlg.paths import PACKAGE_DIR

    for candidate in (Path("engine.yml"), PACKAGE_DIR.parent / "engine.yml"):
        if candidate.is_file():
            return candidate
    return None


def load_settings(path: Optional[Path | str] = None, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Defaults, then ``path`` (if given), then environment variables, then ``overrides``."""
    settings = packaged_defaults()
    base = Path.cwd()
    source = str(DEFAULTS_FILE)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"engine config {path} does not exist")
        settings = _merge(settings, read_config_file(path))
        base = path.resolve().parent
        source = str(path)
    for var, (section, key) in ENV_OVERRIDES.items():
        value = os.environ.get(var)
        if value:
            settings[section][key] = value
    if overrides:
        settings = _merge(settings, overrides)
    validate(settings, source)
    settings["state"]["database_url"] = _resolve_sqlite(settings["state"]["database_url"], base)
    domain = Path(settings["domain"])
    settings["domain"] = str(domain if domain.is_absolute() else (base / domain).resolve())
    safety = settings.setdefault("safety", {})
    if safety.get("responses"):
        extra = Path(safety["responses"])
        safety["responses"] = str(extra if extra.is_absolute() else (base / extra).resolve())
    return settings
