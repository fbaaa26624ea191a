#!/usr/bin/env bash
# The demo: the simulated provider, the FastAPI example wired to it, and traffic — on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
