"""Settings: the engine's (packaged defaults ← a YAML file ← environment) and a training run's,
each validated by a JSON schema and read as one typed object.

``load_settings(path)`` returns the engine's settings as a plain nested dict (what the engine and
the app are built from); :meth:`EngineSettings.load` the same settings as one typed object
(pydantic), which the commands read (``serve``, ``db``, ``converse-eval``; ``evaluate`` for the
packaged generator sections). :meth:`TrainSettings.load` reads a ``train`` config
(``configs/train/*.yml``) the same way. The JSON schemas stay the validators users see (every
violation with its key path); the typed models mirror them and are checked against them by the
tests. Relative paths in the file (``domain``,
SQLite files) are resolved against the config file's folder, so the engine behaves the same
from any working directory.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Type

import yaml
from pydantic import BaseModel, ConfigDict, Field

from empathy_nlg.paths import CONFIG_DIR

DEFAULTS_FILE = CONFIG_DIR / "engine.default.yml"
SCHEMA_FILE = CONFIG_DIR / "engine.schema.json"
TRAIN_SCHEMA_FILE = CONFIG_DIR / "train.schema.json"

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


def settings_from_mapping(cls: Type[Any], values: Optional[Mapping[str, Any]], what: str) -> Any:
    """Build the settings dataclass ``cls`` from a config section; an unknown key is a clear error."""
    values = dict(values or {})
    unknown = set(values) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {what} settings: {sorted(unknown)}")
    return cls(**values)


@functools.lru_cache(maxsize=1)
def _packaged_defaults() -> Dict[str, Any]:
    return read_config_file(DEFAULTS_FILE)


def packaged_defaults() -> Dict[str, Any]:
    """The engine's packaged defaults (``engine.default.yml``), read once; a fresh copy each call.
    What a command that has no engine config of its own falls back to (the harness's generator
    sections, the crisis encoder of ``train-perception`` / ``bench-perceive``)."""
    return copy.deepcopy(_packaged_defaults())


def served_perception(key: str) -> Any:
    """``perception.<key>`` of the packaged defaults (what the served engine uses); None when they
    cannot be read. For commands that measure perception as served (``bench-perceive``,
    ``eval-perception``, ``train-perception``)."""
    try:
        return (packaged_defaults().get("perception") or {}).get(key)
    except ConfigError:
        return None


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


# ------------------------------------------------------------------------------------ typed view
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str
    port: int
    token: Optional[str] = None
    max_body_bytes: int
    max_message_chars: int
    max_events: int
    nlg_queue: int
    deadline_margin_s: float
    history_turns: int


class StateSettings(_Section):
    database_url: str


class PerceptionSettings(_Section):
    artifacts: Optional[str] = None
    encoder: Optional[str] = None
    crisis_encoder: Optional[str] = None
    crisis_encoder_dtype: str = "auto"
    emotion_tuned_weight: float = 0.0
    device: str = "auto"


class SafetySettings(_Section):
    followup_turns: int = 3
    strong_concern: float = 0.8
    responses: Optional[str] = None


class PersonaSettings(_Section):
    enabled: bool = True
    max_facts: int = 5
    max_chars: int = 500


class ExemplarSettings(_Section):
    enabled: bool = True
    k: int = 3
    min_score: float = 0.55
    cache_dir: Optional[str] = None


class ConversationSettings(_Section):
    story_polarity: float = 0.0
    #: "your sister" → "Anna" for the relations the user named (:mod:`empathy_nlg.decoding.names`)
    names: bool = False
    #: the reranker's own settings, validated by :class:`empathy_nlg.decoding.conversation.RerankSettings`
    rerank: Dict[str, Any] = Field(default_factory=dict)
    exemplars: ExemplarSettings = Field(default_factory=ExemplarSettings)


class BatchingSettings(_Section):
    max_batch: int = 8
    window_ms: float = 0.0


class GenerationSettings(_Section):
    generator: str
    generated_responses: List[str]
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    conversation: ConversationSettings = Field(default_factory=ConversationSettings)
    #: one section per generator: its constructor's options (each generator checks its own)
    generators: Dict[str, Dict[str, Any]] = Field(default_factory=dict)

    def section(self, name: Optional[str] = None) -> Dict[str, Any]:
        """The options of generator ``name`` (default: the served one); ``{}`` when it has none."""
        return dict(self.generators.get(name or self.generator) or {})


class EngineSettings(_Section):
    """The engine's settings as one typed object (see the module doc)."""

    server: ServerSettings
    state: StateSettings
    perception: PerceptionSettings
    safety: SafetySettings = Field(default_factory=SafetySettings)
    persona: PersonaSettings = Field(default_factory=PersonaSettings)
    domain: str
    generation: GenerationSettings

    @classmethod
    def load(cls, path: Optional[Path | str] = None, overrides: Optional[Mapping[str, Any]] = None) -> "EngineSettings":
        """:func:`load_settings` (defaults ← ``path`` ← environment ← ``overrides``, schema-checked), typed."""
        return cls.model_validate(load_settings(path, overrides))

    @classmethod
    def find(cls, path: Optional[Path | str] = None, overrides: Optional[Mapping[str, Any]] = None) -> Tuple["EngineSettings", Optional[Path]]:
        """``path``, else the project's ``engine.yml`` as every command finds it
        (:func:`default_config_path`), else the packaged defaults: the settings and the file used."""
        config = Path(path) if path is not None else default_config_path()
        return cls.load(config, overrides), config

    def as_dict(self) -> Dict[str, Any]:
        """The plain nested mapping the engine and the app are built from."""
        return self.model_dump()


# --------------------------------------------------------------------------- a training run's config
class TrainData(_Section):
    #: ``None``: ``<data>/empathetic_dialogues/{train,valid}.jsonl``
    train: Optional[str] = None
    valid: Optional[str] = None
    max_train_examples: Optional[int] = None
    max_valid_examples: Optional[int] = 200
    #: a run on the examples with a mined persona (``persona_moel``'s features) plus as many of the
    #: others, drawn with the seed, as make the persona examples this share of the run's data
    #: (``None``: every example as it comes)
    persona_share: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    #: with ``persona_share``: add a copy of each persona example with its fact moved out of the last
    #: turn, and repeat the examples whose reply uses a fact word this many times
    persona_move_facts: bool = True
    persona_use_repeat: int = Field(default=1, ge=1)
    #: with ``persona_share``: this many examples (drawn with the seed) also get a copy whose last
    #: turn's first sentence is moved into the persona (``features.moved_first_sentence``)
    persona_move_first: int = Field(default=0, ge=0)


class TrainOptim(_Section):
    lr: float = 3e-4
    heads_lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8
    max_steps: int = 300
    warmup_steps: int = 20
    #: a run from ``init_model`` starts its data order (and step count) here, so the batches the
    #: model's own earlier run trained on are not trained again; warm-up and decay count from it
    start_step: int = 0
    checkpoint_every: int = 25
    max_minutes: Optional[float] = None
    grad_clip: float = 1.0
    #: validation perplexity every N steps; the best model is kept and exported
    eval_every: Optional[int] = None
    #: length-bucketed batches
    bucket: bool = True
    autocast: Optional[Literal["auto", "none", "bf16", "fp16"]] = None


class TrainSettings(_Section):
    """One ``empathy-nlg train`` run (``configs/train/*.yml``, schema ``train.schema.json``), typed."""

    generator: str
    #: the run folder: features, checkpoint, log (``None``: ``runs/<variant>``)
    out_dir: Optional[str] = None
    features_dir: Optional[str] = None
    init_from: Optional[str] = None
    init_adapter: Optional[str] = None
    init_model: Optional[str] = None
    export_dir: Optional[str] = None
    seed: int = 13
    device: Optional[str] = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    backbone_path: Optional[str] = None
    threads: Optional[int] = None
    data: TrainData = Field(default_factory=TrainData)
    causes: Literal["model", "speaker"] = "model"
    #: the knowledge source (``{"type": NAME, ...its options}``; ``None``: retrieval)
    knowledge: Optional[Dict[str, Any]] = None
    #: the generator's architecture and ablation switches (its settings dataclass checks them)
    settings: Dict[str, Any] = Field(default_factory=dict)
    #: the LoRA options (:class:`empathy_nlg.generators.conditioned.LoraSettings` checks them)
    lora: Optional[Dict[str, Any]] = None
    optim: TrainOptim = Field(default_factory=TrainOptim)

    @classmethod
    def load(cls, path: Path | str, generator: str) -> "TrainSettings":
        """The config file at ``path`` for ``generator`` (its ``generator:`` key may be left out):
        a missing file is a ``FileNotFoundError``, a schema violation or a config for another
        generator a ``ValueError`` naming the key."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        data = read_config_file(path)
        data.setdefault("generator", generator)
        lines = schema_errors(TRAIN_SCHEMA_FILE, data)
        if lines:
            raise ValueError(f"{path} is invalid: " + "; ".join(lines))
        if data["generator"] != generator:
            raise ValueError(f"{path} is a config for {data['generator']!r}, not {generator!r}")
        return cls.model_validate(data)

    def updated(self, **changes: Any) -> "TrainSettings":
        """A validated copy with top-level keys replaced (a mapping section is merged key by key)."""
        return type(self).model_validate(_merge(self.model_dump(), changes))
