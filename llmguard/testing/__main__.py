"""Run the simulated provider: ``python -m llmguard.testing --host 127.0.0.1 --port 8100``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._app import SimulatedProvider
from ._scenario import Scenario
from ._server import import_uvicorn

ENV_FIRST_TOKEN_DELAY = "LLMGUARD_SIM_FIRST_TOKEN_DELAY"
ENV_CHUNK_GAP = "LLMGUARD_SIM_CHUNK_GAP"


def _env_float(name: str) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds, not {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llmguard.testing",
        description="A simulated OpenAI / Anthropic API server for tests and demos.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8100, help="port to bind (default: 8100)")
    parser.add_argument(
        "--first-token-delay",
        type=float,
        default=None,
        help=f"seconds before the first content token (default: ${ENV_FIRST_TOKEN_DELAY} or 0)",
    )
    parser.add_argument(
        "--chunk-gap",
        type=float,
        default=None,
        help=f"seconds between content deltas (default: ${ENV_CHUNK_GAP} or 0)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    first = args.first_token_delay if args.first_token_delay is not None else _env_float(ENV_FIRST_TOKEN_DELAY)
    gap = args.chunk_gap if args.chunk_gap is not None else _env_float(ENV_CHUNK_GAP)
    try:
        default = Scenario(first_token_delay=first, chunk_gap=gap)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    try:
        uvicorn = import_uvicorn()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    app = SimulatedProvider(default=default)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on", ws="none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
