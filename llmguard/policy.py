"""Caps and loop detection as pure functions over session state. (The stores apply the same rules atomically; the
Redis store runs them in Lua, and the shared store test suite holds the two to one behaviour.)"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from llmguard.errors import BlockReason
from llmguard.settings import GuardSettings, SessionLimits
from llmguard.store.base import Caps, SessionState

MAX_CYCLE = 5
T = TypeVar("T")


def signature_digest(signature: str) -> str:
    """Signatures are kept as short digests so a session's history stays small whatever the arguments."""
    return hashlib.sha256(signature.encode()).hexdigest()[:16]


def loop_repeats(history: Sequence[str]) -> int:
    """How many times the most-repeated cycle at the end of `history` repeats back to back.

    A cycle has a period of 1 (the same call again and again) up to 5 (A→B→C→D→E→A→…). A period-k cycle only
    counts if it is not itself a shorter cycle, so "A A A A" counts as 4 repeats of A, not 2 of "A A".
    """
    best = 1 if history else 0
    n = len(history)
    for period in range(1, MAX_CYCLE + 1):
        if 2 * period > n:
            break
        tail = history[n - period :]
        if period > 1 and any(_is_cycle(tail, smaller) for smaller in range(1, period) if period % smaller == 0):
            continue
        repeats = 1
        while (repeats + 1) * period <= n and history[n - (repeats + 1) * period : n - repeats * period] == tail:
            repeats += 1
        best = max(best, repeats)
    return best


def _is_cycle(block: Sequence[str], period: int) -> bool:
    return all(block[i] == block[i % period] for i in range(len(block)))


def caps_for(settings: GuardSettings, limits: SessionLimits | None = None) -> Caps:
    """A session's own limits override the settings' session caps one by one (a limit left `None` keeps the
    setting); the feature and service caps always apply."""
    own = limits or SessionLimits()
    return Caps(
        session_budget_usd=_first(own.budget_usd, settings.session_budget_usd),
        session_max_llm_calls=_first(own.max_llm_calls, settings.session_max_llm_calls),
        session_max_tool_calls=_first(own.max_tool_calls, settings.session_max_tool_calls),
        session_max_tokens=_first(own.max_tokens, settings.session_max_tokens),
        feature_daily_budget_usd=settings.feature_daily_budget_usd,
        daily_budget_usd=settings.daily_budget_usd,
    )


def _first(own: T | None, default: T | None) -> T | None:
    return default if own is None else own


def exhausted(state: SessionState, caps: Caps) -> BlockReason | None:
    """Whether a session can make no further call at all, whatever its size: a loop was flagged, or a cap is used
    up. (Whether one particular call fits is decided atomically by the store, with that call's estimate.)"""
    if state.blocked_reason == "loop_detected":
        return "loop_detected"
    if caps.session_budget_usd is not None and state.spent_usd >= caps.session_budget_usd:
        return "session_budget"
    if caps.session_max_llm_calls is not None and state.llm_calls >= caps.session_max_llm_calls:
        return "session_llm_calls"
    if caps.session_max_tool_calls is not None and state.tool_calls > caps.session_max_tool_calls:
        return "session_tool_calls"
    if caps.session_max_tokens is not None:
        used = sum(count for kind, count in state.tokens.items() if kind != "reasoning")
        if used >= caps.session_max_tokens:
            return "session_tokens"
    return None
