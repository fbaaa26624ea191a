"""The one interface every budget store implements, and the values that cross it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from llmguard.errors import BlockReason


@dataclass(slots=True)
class Caps:
    """The caps that apply to one call; `None` is off."""

    session_budget_usd: float | None = None
    session_max_llm_calls: int | None = None
    session_max_tool_calls: int | None = None
    session_max_tokens: int | None = None
    feature_daily_budget_usd: float | None = None
    daily_budget_usd: float | None = None


@dataclass(slots=True)
class Reservation:
    call_id: str
    session_key: str | None  # encoded session id (see store.keys); None = no per-session state
    session_id: str | None  # as the user gave it (normalised), for display
    feature: str
    estimate_usd: float
    estimate_tokens: int
    caps: Caps
    hold_ttl_seconds: int
    session_ttl_seconds: int
    count_call: bool = True  # False for an SDK retry of a call already counted


@dataclass(slots=True)
class Admission:
    allowed: bool
    reason: BlockReason | None = None
    spent_usd: float = 0.0
    limit_usd: float | None = None


@dataclass(slots=True)
class Settlement:
    call_id: str
    session_key: str | None
    session_id: str | None
    feature: str
    cost_usd: float | None  # None: usage never arrived, settle at max(estimate_usd, hold)
    estimate_usd: float
    tokens: dict[str, int]
    tool_signatures: list[str]
    count_call: bool
    loop_repeat_threshold: int
    loop_warn_threshold: int
    loop_history: int
    hold_ttl_seconds: int
    session_ttl_seconds: int


@dataclass(slots=True)
class SettleResult:
    charged_usd: float
    session_spent_usd: float = 0.0
    loop_repeats: int = 0
    loop_warning: bool = False  # this settle took the session to `loop_warn_threshold` for the first time
    blocked_reason: BlockReason | None = None
    already_settled: bool = False


@dataclass(slots=True)
class SessionState:
    session_id: str
    spent_usd: float = 0.0
    held_usd: float = 0.0
    tokens: dict[str, int] = field(default_factory=dict)
    llm_calls: int = 0
    tool_calls: int = 0
    blocked_reason: str | None = None
    last_activity: float | None = None  # Unix seconds (server time for Redis)


class BudgetStore(Protocol):
    """Per-session, per-feature-day and per-day totals with atomic reserve → settle.

    `reserve` admits a call only if, for every cap, `spent + held + estimate <= cap`, and then holds the estimate;
    `settle` replaces the hold with the actual cost, exactly once per call id.
    """

    async def reserve(self, reservation: Reservation) -> Admission: ...

    async def settle(self, settlement: Settlement) -> SettleResult: ...

    async def get_session(self, session_key: str) -> SessionState | None: ...

    async def end_session(self, session_key: str) -> SessionState | None: ...

    async def top_sessions(self, limit: int) -> list[SessionState]: ...

    async def active_sessions(self, within_seconds: int) -> int: ...

    async def aclose(self) -> None: ...

    def reserve_sync(self, reservation: Reservation) -> Admission: ...

    def settle_sync(self, settlement: Settlement) -> SettleResult: ...

    def get_session_sync(self, session_key: str) -> SessionState | None: ...

    def end_session_sync(self, session_key: str) -> SessionState | None: ...

    def top_sessions_sync(self, limit: int) -> list[SessionState]: ...

    def active_sessions_sync(self, within_seconds: int) -> int: ...

    def close(self) -> None: ...
