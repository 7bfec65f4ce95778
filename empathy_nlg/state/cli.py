"""``empathy-nlg db``: apply or inspect the engine's schema migrations."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["upgrade", "current"], help="upgrade to the newest schema, or show the revision")
    parser.add_argument("--url", default=None, help="database URL (default: $DATABASE_URL)")


def run(args: argparse.Namespace) -> int:
    from empathy_nlg.state.repository import StateRepository, database_url

    repo = StateRepository(database_url(args.url))
    try:
        if args.action == "upgrade":
            repo.migrate()
        print(f"schema revision: {repo.current_revision() or 'none'}  ({repo.engine.url.render_as_string(hide_password=True)})")
    finally:
        repo.dispose()
    return 0
