"""Where the engine finds data, caches and its committed artefacts. Nothing here is hard-coded
to one machine: every location can be overridden by an environment variable or a command option."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ARTIFACTS_DIR = PACKAGE_DIR / "artifacts"
CONFIG_DIR = PACKAGE_DIR / "config"


def cache_dir() -> Path:
    """Converted backbones and other rebuildable caches (``EMPATHY_NLG_CACHE``)."""
    root = os.environ.get("EMPATHY_NLG_CACHE") or Path.home() / ".cache" / "empathy-nlg"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_data_dir() -> Path:
    """The shared research data: ``EMPATHY_NLG_DATA``, else ``../shared/data`` from the working directory."""
    return Path(os.environ.get("EMPATHY_NLG_DATA") or Path.cwd().parent / "shared" / "data")
