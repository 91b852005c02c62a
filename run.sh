#!/usr/bin/env bash
# One entry point for a fresh machine; each command does its own set-up first.
#   bash run.sh demo    build a small model, fine-tune it on bundled data, show it learned, answer through the server
#   bash run.sh test    the test suite (what CI runs)
# Set-up: a virtual environment in .venv; `pip install torch==2.13.0` when that venv has no torch (a bare `torch`
# would pull a multi-GB CUDA build); then lmforge with its test extras, holding torch at the installed version.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

setup() {
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    .venv/bin/pip install -q "torch==2.13.0"
  fi
  local stamp=.venv/.lmforge-installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -c 'import torch; print(f"torch=={torch.__version__}")' > .venv/constraints.txt
    .venv/bin/pip install -q -c .venv/constraints.txt -e ".[test]"
    touch "$stamp"
  fi
}

case "${1:-}" in
  demo) setup; shift; exec .venv/bin/lmforge demo "$@" ;;
  test) setup; shift; exec .venv/bin/python -m pytest tests -q "$@" ;;
  *) echo "usage: bash run.sh demo|test [extra arguments]" >&2; exit 2 ;;
esac
