"""``empathy-nlg serve``: run the engine's HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="engine YAML config (default: ./engine.yml, else the checkout's engine.yml, else packaged defaults)")
    parser.add_argument("--host", default=None, help="bind address (default from config: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default from config: 5056)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from empathy_nlg.api.app import create_app
    from empathy_nlg.settings import EngineSettings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings, config = EngineSettings.find(args.config)
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    print(f"empathy engine on http://{host}:{port} (config: {config or 'defaults'}; "
          f"generator: {settings.generation.generator}; models load in the background, see /health)", flush=True)
    uvicorn.run(create_app(settings.as_dict()), host=host, port=port, log_level="info", access_log=False)
    return 0
