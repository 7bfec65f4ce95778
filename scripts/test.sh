#!/usr/bin/env bash
# Every test of the project, in the interpreter each part runs in; ends with one summary line.
#   engine (Python 3.11):   tests/empathy_nlg        unit tests of the engine, incl. PostgreSQL
#   agent  (Python 3.10):   tests/agent tests/actions  Rasa components, NLG, actions
#   Rasa:                   rasa data validate + rasa test on tests/test_stories.yml
#   end to end:             tests/e2e                 real engine, action server and rasa run on loopback
#   channels (own env):     tests/channels            against the real stack with credentials.yml: a socket.io
#                                                     client, our web chat page and rasa-webchat in Chromium
#                                                     (Playwright), signed Slack requests, `make chat` in tmux
# Extra pytest arguments: PYTEST_ARGS="-k something" make test
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export RASA_TELEMETRY_ENABLED=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
REPORTS="$ROOT/results/junit"
rm -rf "$REPORTS"; mkdir -p "$REPORTS"
START=$(date +%s)
status=0
step() { printf '\n\033[1m[test] %s\033[0m\n' "$*"; }

step "engine unit tests (Python 3.11)"
.venvs/engine/bin/python -m pytest tests/empathy_nlg -q -p no:cacheprovider ${PYTEST_ARGS:-} --junitxml "$REPORTS/engine.xml" || status=1

step "agent and action tests (Python 3.10, Rasa 3.6)"
.venvs/rasa/bin/python -m pytest tests/agent tests/actions -q -p no:cacheprovider ${PYTEST_ARGS:-} --junitxml "$REPORTS/agent.xml" || status=1

step "Rasa data validation and test stories"
.venvs/rasa/bin/python -m pytest tests/rasa -q -p no:cacheprovider ${PYTEST_ARGS:-} --junitxml "$REPORTS/rasa.xml" || status=1

step "end to end: engine + action server + rasa run on loopback"
.venvs/engine/bin/python -m pytest tests/e2e -q -p no:cacheprovider ${PYTEST_ARGS:-} --junitxml "$REPORTS/e2e.xml" || status=1

step "channels: socket.io, web chat page and rasa-webchat in Chromium, Slack, make chat (real stack)"
if bash scripts/setup_test_clients.sh; then
  .venvs/channels/bin/python -m pytest tests/channels -q -p no:cacheprovider ${PYTEST_ARGS:-} --junitxml "$REPORTS/channels.xml" || status=1
else
  echo "error: the channel test clients could not be set up (see above)" >&2; status=1
fi

step "summary ($(( $(date +%s) - START )) s)"
python3 - "$REPORTS" <<'PY'
import sys, pathlib, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.xml")):
    for suite in ET.parse(f).getroot().iter("testsuite"):
        t, fl, er, sk = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        print(f"  {f.stem:8s} {t - fl - er - sk:4d} passed {fl + er:4d} failed {sk:4d} skipped")
        passed += t - fl - er - sk; failed += fl + er; skipped += sk
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
exit $status
