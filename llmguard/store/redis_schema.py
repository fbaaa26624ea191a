"""How the Redis store's data looks on the server: where each scope's keys live, and how values are encoded.

Every key of a scope shares one hash tag, so that one script can run on all of them in a Redis Cluster:
`<prefix>:{<session key>}:…` for a session, `{d:<UTC day>}` for the day, `{f:<UTC day>:<feature digest>}` for a
feature's day and `{c:<call id>}` for a call outside any session.

Amounts are integer pico-dollars (`HINCRBY`): sums are exact, and rounding a call's cost to the pico-dollar moves it
by at most 5e-13 USD, so even a few thousand calls stay within 1e-9 USD of the float sum of their costs (nano-dollars
typically drift by 1e-8 over a thousand calls). A signed 64-bit counter still holds 9.2 million USD per key.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import date, timedelta
from typing import Final, cast

from llmguard.errors import BlockReason
from llmguard.store.base import SessionState
from llmguard.store.keys import session_key as encode_session_id

PICO: Final = 10**12
_ENCODED = re.compile(r"[A-Za-z0-9_.\-]{1,128}|~[0-9a-f]{64}")


class RedisKeys:
    """The key layout under one prefix."""

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("redis_prefix must not contain '{' or '}': the session is the hash tag")
        self.prefix = prefix
        # Indexes for `top` and `active`: no hash tag, as only single-key commands and scripts touch them.
        self.spend_index = f"{prefix}:sessions:spend"
        self.active_index = f"{prefix}:sessions:active"

    def session(self, session_key: str) -> list[str]:
        """state, holds, expiries, settled, hist."""
        base = f"{self.prefix}:{{{scope_tag(session_key)}}}:"
        return [base + name for name in ("state", "holds", "expiries", "settled", "hist")]

    def window(self, day: int, feature_digest: str | None) -> list[str]:
        """state, holds, expiries of a UTC day (a day number), or of a feature's UTC day."""
        iso = (date(1970, 1, 1) + timedelta(days=day)).isoformat()
        tag = f"d:{iso}" if feature_digest is None else f"f:{iso}:{feature_digest}"
        return [f"{self.prefix}:{{{tag}}}:{name}" for name in ("state", "holds", "expiries")]

    def call(self, call_id: str) -> str:
        """The hold of a call outside any session."""
        return f"{self.prefix}:{{c:{scope_tag(call_id)}}}:hold"


def scope_tag(key: str) -> str:
    """Keys come encoded by `store.keys.session_key`; anything else is encoded here, so no key escapes its tag."""
    return key if _ENCODED.fullmatch(key) else encode_session_id(key)


def feature_digest(feature: str) -> str:
    return hashlib.sha256(feature.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def to_pico(usd: float) -> int:
    return round(usd * PICO)


def to_usd(pico: int) -> float:
    return pico / PICO


def pico_cap(usd: float | None) -> str:
    """A dollar cap as a script argument: pico-dollars, or empty for none."""
    return "" if usd is None or usd == math.inf else str(to_pico(usd))


def count_cap(value: int | None) -> str:
    """A count cap as a script argument: empty for none."""
    return "" if value is None else str(value)


def utf8(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value or ""


def block_reason(value: bytes | str | None) -> BlockReason | None:
    return cast(BlockReason, text(value)) if value else None


def session_state(raw: list[bytes]) -> SessionState:
    """A session's state hash, as `HGETALL` returns it (a flat list of names and values)."""
    fields = {text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}
    last_activity = fields.get("last_activity")
    return SessionState(
        session_id=text(fields.get("id")),
        spent_usd=to_usd(int(fields.get("spent", 0))),
        held_usd=to_usd(int(fields.get("held", 0))),
        tokens={name[4:]: int(value) for name, value in fields.items() if name.startswith("tok:")},
        llm_calls=int(fields.get("llm_calls", 0)),
        tool_calls=int(fields.get("tool_calls", 0)),
        blocked_reason=text(fields["blocked"]) if "blocked" in fields else None,
        last_activity=int(last_activity) / 1000 if last_activity else None,
    )
