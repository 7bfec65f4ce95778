#!/usr/bin/env bash
# Idempotent setup of the clients the channel tests (tests/channels) drive, kept out of the Rasa and
# engine environments:
#   1. Debian's chromium (apt), which Playwright drives (Playwright never downloads a browser), and
#      tmux, the terminal the `make chat` test types into.
#   2. .venvs/channels (Python 3.11): Playwright, python-socketio, pytest (requirements/channels.txt).
#   3. rasa-webchat 1.0.1 from the npm registry (a widget we did not write) into .cache/test-clients/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
STAMPS="$ROOT/.stamps"
mkdir -p "$STAMPS"
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
MISSING=()
[ -x "$CHROMIUM" ] || MISSING+=(chromium)
command -v tmux >/dev/null 2>&1 || MISSING+=(tmux)
if [ ${#MISSING[@]} -eq 0 ]; then
  say "chromium and tmux present"
else
  say "installing ${MISSING[*]} from Debian's packages for the channel tests (≈ 3 min for chromium)…"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${MISSING[@]}" >/dev/null
  [ -x "$CHROMIUM" ] || { echo "error: chromium was not installed at $CHROMIUM" >&2; exit 1; }
  command -v tmux >/dev/null 2>&1 || { echo "error: tmux was not installed" >&2; exit 1; }
fi

HASH=$(cat requirements/channels.txt | sha256sum | cut -c1-16)
if [ -f "$STAMPS/channels-env" ] && [ "$(cat "$STAMPS/channels-env")" = "$HASH" ] && [ -x .venvs/channels/bin/python ]; then
  say "channel test environment up to date"
else
  say "creating the channel test environment (.venvs/channels: Playwright, python-socketio)…"
  PY311=""
  for cand in python3.11 "$(command -v pyenv >/dev/null 2>&1 && pyenv prefix 3.11 2>/dev/null | head -n1)/bin/python3.11"; do
    if [ -n "$cand" ] && "$cand" -c "import sys; assert sys.version_info[:2] == (3, 11)" >/dev/null 2>&1; then PY311="$cand"; break; fi
  done
  [ -n "$PY311" ] || { echo "error: Python 3.11 is needed for .venvs/channels" >&2; exit 1; }
  rm -rf .venvs/channels
  "$PY311" -m venv .venvs/channels
  .venvs/channels/bin/pip install --progress-bar off -q -r requirements/channels.txt
  echo "$HASH" > "$STAMPS/channels-env"
fi

WEBCHAT_VERSION=1.0.1
WEBCHAT=".cache/test-clients/rasa-webchat-$WEBCHAT_VERSION.js"
if [ -s "$WEBCHAT" ]; then
  say "rasa-webchat $WEBCHAT_VERSION present"
else
  command -v npm >/dev/null 2>&1 || { echo "error: npm is needed to fetch rasa-webchat for the widget test (apt-get install npm)" >&2; exit 1; }
  say "fetching rasa-webchat $WEBCHAT_VERSION from the npm registry (widget test)…"
  TMP=$(mktemp -d)
  (cd "$TMP" && npm pack --silent "rasa-webchat@$WEBCHAT_VERSION" >/dev/null && tar xzf "rasa-webchat-$WEBCHAT_VERSION.tgz")
  mkdir -p .cache/test-clients
  cp "$TMP/package/lib/index.js" "$WEBCHAT"
  rm -rf "$TMP"
fi
