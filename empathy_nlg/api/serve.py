"""``empathy-nlg serve``: run the engine's HTTP API with uvicorn.

Secure by default: bound to anything but loopback, the engine refuses to start without a token
(``server.token`` or ``EMPATHY_NLG_TOKEN``; ``make serve`` makes one per install in
``var/engine.token``), because every route but ``/health`` reads or writes conversations.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="engine YAML config (default: ./engine.yml, else the checkout's engine.yml, else packaged defaults)")
    parser.add_argument("--host", default=None, help="bind address (default from config: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default from config: 5056)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from empathy_nlg.api.app import create_app
    from empathy_nlg.settings import EngineSettings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings, config = EngineSettings.find(args.config)
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    if not settings.server.token and not is_loopback(host):
        print(f"error: the engine would listen on {host} without a token: anyone who reaches it could read and "
              "write conversations. Set EMPATHY_NLG_TOKEN (or server.token in engine.yml), or bind to 127.0.0.1.",
              file=sys.stderr)
        return 2
    print(f"empathy engine on http://{host}:{port} (config: {config or 'defaults'}; "
          f"generator: {settings.generation.generator}; models load in the background, see /health)", flush=True)
    uvicorn.run(create_app(settings.as_dict()), host=host, port=port, log_level="info", access_log=False)
    return 0
