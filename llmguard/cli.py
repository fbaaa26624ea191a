"""`llmguard sessions show ID` and `llmguard sessions top [-n N]`: a look at the budget store from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from llmguard.context import normalise_session_id
from llmguard.policy import caps_for, exhausted
from llmguard.settings import GuardSettings
from llmguard.store.base import SessionState
from llmguard.store.keys import session_key

__all__ = ["main"]

NO_REDIS = "llmguard: no Redis is configured (set LLMGUARD_REDIS_URL or pass --redis-url); sessions live in Redis."


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    overrides: dict[str, Any] = {"redis_timeout_seconds": getattr(args, "timeout", 5.0)}
    if getattr(args, "redis_url", None):
        overrides["redis_url"] = args.redis_url
    if getattr(args, "redis_prefix", None):
        overrides["redis_prefix"] = args.redis_prefix
    settings = GuardSettings(**overrides)
    if settings.redis_url is None:
        print(NO_REDIS, file=sys.stderr)
        return 2

    from llmguard.store.redis import FAILURES, RedisStore

    store = RedisStore(settings)
    caps = caps_for(settings)  # a used-up cap blocks a session as surely as a loop (only loops are stored)
    try:
        if args.action == "show":
            normalised = normalise_session_id(args.session_id, settings.max_session_id_length)
            if normalised is None:
                print("llmguard: the session id is empty", file=sys.stderr)
                return 2
            state = store.get_session_sync(session_key(normalised))
            if state is None:
                print(f"llmguard: no session {_printable(normalised)}", file=sys.stderr)
                return 1
            state.blocked_reason = state.blocked_reason or exhausted(state, caps)
            print(json.dumps(_record(state), indent=2) if as_json else _show(state))
        else:
            states = store.top_sessions_sync(args.n)
            for state in states:
                state.blocked_reason = state.blocked_reason or exhausted(state, caps)
            if as_json:
                print(json.dumps([_record(state) for state in states], indent=2))
            else:
                print(_table(states) if states else "No sessions.")
    except FAILURES as exc:
        print(f"llmguard: Redis failed: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    # The common options are accepted before or after the subcommands. SUPPRESS keeps a subcommand's default from
    # overwriting a value given earlier (the actions are shared, so defaults are read in `main`, not set here).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=argparse.SUPPRESS, help="default: $LLMGUARD_REDIS_URL")
    common.add_argument("--redis-prefix", default=argparse.SUPPRESS, help="default: $LLMGUARD_REDIS_PREFIX")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds per Redis command (5)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    parser = argparse.ArgumentParser(prog="llmguard", description="Inspect llmguard sessions.", parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)
    sessions = commands.add_parser("sessions", help="per-session totals", parents=[common])
    actions = sessions.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="one session's totals", parents=[common])
    show.add_argument("session_id", metavar="ID")
    top = actions.add_parser("top", help="the sessions that spent most", parents=[common])
    top.add_argument("-n", type=int, default=10, help="how many (10)")
    return parser


def _show(state: SessionState) -> str:
    rows = [
        ("session", _printable(state.session_id)),
        ("spent_usd", _usd(state.spent_usd)),
        ("held_usd", _usd(state.held_usd)),
        *((f"tokens.{kind}", str(count)) for kind, count in sorted(state.tokens.items())),
        ("llm_calls", str(state.llm_calls)),
        ("tool_calls", str(state.tool_calls)),
        ("blocked", state.blocked_reason or "-"),
        ("last_activity", _when(state.last_activity)),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _table(states: Sequence[SessionState]) -> str:
    header = ("SESSION", "SPENT_USD", "HELD_USD", "TOKENS", "LLM_CALLS", "TOOL_CALLS", "BLOCKED", "LAST_ACTIVITY")
    rows = [header] + [
        (
            _printable(state.session_id),
            _usd(state.spent_usd),
            _usd(state.held_usd),
            str(sum(state.tokens.values())),
            str(state.llm_calls),
            str(state.tool_calls),
            state.blocked_reason or "-",
            _when(state.last_activity),
        )
        for state in states
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {1, 2, 3, 4, 5}
    lines = [
        "  ".join(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _record(state: SessionState) -> dict[str, Any]:
    record = asdict(state)
    record["last_activity"] = _when(state.last_activity) if state.last_activity is not None else None
    return record


def _usd(value: float) -> str:
    return f"{value:.6f}"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _printable(text: str) -> str:
    """Session ids are user input: never let one drive the terminal."""
    return "".join(char if char.isprintable() else f"\\u{ord(char):04x}" for char in text)


if __name__ == "__main__":
    raise SystemExit(main())
