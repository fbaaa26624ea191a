#!/usr/bin/env bash
# Shared by demo.sh and test.sh: a virtualenv in .venv with llmguard and its dev/example extras installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import llmguard, openai, anthropic, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.llmguard-installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  touch .venv/.llmguard-installed
fi
