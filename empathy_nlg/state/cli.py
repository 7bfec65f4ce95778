"""``empathy-nlg db``: apply or inspect the engine's schema migrations.

The database is the one ``serve`` uses: ``--url``, else the engine settings (``--config``, else the
project's ``engine.yml`` as ``serve`` finds it, with ``DATABASE_URL`` overriding the file).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["upgrade", "current"], help="upgrade to the newest schema, or show the revision")
    parser.add_argument("--url", default=None, help="database URL (default: the engine settings' state.database_url)")
    parser.add_argument("--config", type=Path, default=None,
                        help="engine YAML config (default: ./engine.yml, else the checkout's engine.yml, else packaged defaults)")


def resolve_url(args: argparse.Namespace) -> str:
    from empathy_nlg.settings import EngineSettings
    from empathy_nlg.state.repository import database_url

    if args.url:
        return database_url(args.url)
    return database_url(EngineSettings.find(args.config)[0].state.database_url)


def run(args: argparse.Namespace) -> int:
    from empathy_nlg.state.repository import StateRepository

    repo = StateRepository(resolve_url(args))
    try:
        if args.action == "upgrade":
            repo.migrate()
        print(f"schema revision: {repo.current_revision() or 'none'}  ({repo.engine.url.render_as_string(hide_password=True)})")
    finally:
        repo.dispose()
    return 0
