"""The embedded store: one process, the same semantics as the Redis store (holds and sessions expire too)."""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from llmguard.errors import BlockReason
from llmguard.policy import loop_repeats, signature_digest
from llmguard.store.base import Admission, Reservation, SessionState, Settlement, SettleResult

TOKEN_TYPES = ("input", "cache_read", "cache_write", "output", "reasoning")


@dataclass(slots=True)
class _Totals:
    spent: float = 0.0
    held: float = 0.0
    expires_at: float = 0.0


@dataclass(slots=True)
class _Session(_Totals):
    session_id: str = ""
    held_tokens: int = 0
    held_calls: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    llm_calls: int = 0
    tool_calls: int = 0
    history: deque[str] = field(default_factory=deque)
    blocked: BlockReason | None = None
    loop_warned: bool = False
    last_activity: float = 0.0


@dataclass(slots=True)
class _Hold:
    usd: float
    tokens: int
    counted: bool
    expires_at: float
    session_key: str | None
    window_keys: tuple[str, ...]


class MemoryStore:
    def __init__(self) -> None:
        self._last_sweep = 0.0
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._windows: dict[str, _Totals] = {}
        self._holds: dict[str, _Hold] = {}
        self._expiries: list[tuple[float, str]] = []
        self._settled: dict[str, float] = {}

    # -- sync API (the async methods below call these: nothing here blocks) --

    def reserve_sync(self, reservation: Reservation) -> Admission:
        now = time.time()
        with self._lock:
            self._expire(now)
            caps = reservation.caps
            session = self._session(reservation, now) if reservation.session_key else None
            day = time.strftime("%Y-%m-%d", time.gmtime(now))
            windows: list[tuple[str, float, BlockReason]] = []
            if caps.feature_daily_budget_usd is not None:
                windows.append(
                    (f"f:{day}:{reservation.feature}", caps.feature_daily_budget_usd, "feature_daily_budget")
                )
            if caps.daily_budget_usd is not None:
                windows.append((f"d:{day}", caps.daily_budget_usd, "daily_budget"))
            estimate = reservation.estimate_usd
            if session is not None:
                denial = self._deny_session(session, reservation)
                if denial is not None:
                    session.blocked = denial.reason
                    return denial
            for key, cap, window_reason in windows:
                totals = self._windows.setdefault(key, _Totals())
                if totals.spent + totals.held + estimate > cap:
                    return Admission(False, window_reason, spent_usd=totals.spent, limit_usd=cap)
            expires_at = now + reservation.hold_ttl_seconds
            for key, _, _ in windows:
                totals = self._windows[key]
                totals.held += estimate
                totals.expires_at = max(totals.expires_at, now + 2 * 86400)
            if session is not None:
                session.held += estimate
                session.held_tokens += reservation.estimate_tokens
                session.held_calls += 1 if reservation.count_call else 0
                session.last_activity = now
                session.expires_at = now + reservation.session_ttl_seconds
            self._holds[reservation.call_id] = _Hold(
                estimate,
                reservation.estimate_tokens,
                reservation.count_call,
                expires_at,
                reservation.session_key,
                tuple(key for key, _, _ in windows),
            )
            heapq.heappush(self._expiries, (expires_at, reservation.call_id))
            return Admission(True, spent_usd=session.spent if session else 0.0, limit_usd=caps.session_budget_usd)

    def settle_sync(self, settlement: Settlement) -> SettleResult:
        now = time.time()
        with self._lock:
            self._expire(now)
            if settlement.call_id in self._settled:
                return SettleResult(0.0, already_settled=True)
            self._settled[settlement.call_id] = now + settlement.session_ttl_seconds
            hold = self._holds.pop(settlement.call_id, None)
            held = hold.usd if hold is not None else 0.0
            charged = settlement.cost_usd if settlement.cost_usd is not None else max(settlement.estimate_usd, held)
            if hold is not None:
                self._release(hold)
            day = time.strftime("%Y-%m-%d", time.gmtime(now))
            for key in (f"f:{day}:{settlement.feature}", f"d:{day}"):
                totals = self._windows.setdefault(key, _Totals())
                totals.spent += charged
                totals.expires_at = max(totals.expires_at, now + 2 * 86400)
            if settlement.session_key is None:
                return SettleResult(charged)
            session = self._sessions.get(settlement.session_key)
            if session is None:
                session = self._sessions[settlement.session_key] = _Session(session_id=settlement.session_id or "")
            session.spent += charged
            for kind, value in settlement.tokens.items():
                session.tokens[kind] = session.tokens.get(kind, 0) + value
            session.llm_calls += 1 if settlement.count_call else 0
            session.tool_calls += len(settlement.tool_signatures)
            for signature in settlement.tool_signatures:
                session.history.append(signature_digest(signature))
            while len(session.history) > settlement.loop_history:
                session.history.popleft()
            repeats = loop_repeats(list(session.history)) if settlement.tool_signatures else 0
            if repeats >= settlement.loop_repeat_threshold:
                session.blocked = "loop_detected"
            warning = repeats >= settlement.loop_warn_threshold > 0 and not session.loop_warned
            session.loop_warned = session.loop_warned or warning
            session.last_activity = now
            session.expires_at = now + settlement.session_ttl_seconds
            return SettleResult(charged, session.spent, repeats, warning, session.blocked)

    def get_session_sync(self, session_key: str) -> SessionState | None:
        with self._lock:
            self._expire(time.time())
            session = self._sessions.get(session_key)
            return None if session is None else _state(session)

    def end_session_sync(self, session_key: str) -> SessionState | None:
        with self._lock:
            self._expire(time.time())
            session = self._sessions.pop(session_key, None)
            return None if session is None else _state(session)

    def top_sessions_sync(self, limit: int) -> list[SessionState]:
        with self._lock:
            self._expire(time.time())
            ranked = sorted(self._sessions.values(), key=lambda s: s.spent, reverse=True)
            return [_state(session) for session in ranked[:limit]]

    def active_sessions_sync(self, within_seconds: int) -> int:
        now = time.time()
        with self._lock:
            self._expire(now)
            return sum(1 for session in self._sessions.values() if session.last_activity >= now - within_seconds)

    def close(self) -> None:
        pass

    # -- async API --

    async def reserve(self, reservation: Reservation) -> Admission:
        return self.reserve_sync(reservation)

    async def settle(self, settlement: Settlement) -> SettleResult:
        return self.settle_sync(settlement)

    async def get_session(self, session_key: str) -> SessionState | None:
        return self.get_session_sync(session_key)

    async def end_session(self, session_key: str) -> SessionState | None:
        return self.end_session_sync(session_key)

    async def top_sessions(self, limit: int) -> list[SessionState]:
        return self.top_sessions_sync(limit)

    async def active_sessions(self, within_seconds: int) -> int:
        return self.active_sessions_sync(within_seconds)

    async def aclose(self) -> None:
        pass

    # -- internals (called with the lock held) --

    def _session(self, reservation: Reservation, now: float) -> _Session:
        assert reservation.session_key is not None
        session = self._sessions.get(reservation.session_key)
        if session is None or session.expires_at <= now:
            session = self._sessions[reservation.session_key] = _Session(session_id=reservation.session_id or "")
            session.expires_at = now + reservation.session_ttl_seconds
        return session

    @staticmethod
    def _deny_session(session: _Session, reservation: Reservation) -> Admission | None:
        caps = reservation.caps
        if session.blocked is not None:
            return Admission(False, session.blocked, session.spent, caps.session_budget_usd)
        budget = caps.session_budget_usd
        if budget is not None and session.spent + session.held + reservation.estimate_usd > budget:
            return Admission(False, "session_budget", session.spent, budget)
        calls = caps.session_max_llm_calls
        if calls is not None and reservation.count_call and session.llm_calls + session.held_calls + 1 > calls:
            return Admission(False, "session_llm_calls", session.spent, budget)
        tool_calls = caps.session_max_tool_calls
        if tool_calls is not None and session.tool_calls > tool_calls:
            return Admission(False, "session_tool_calls", session.spent, budget)
        max_tokens = caps.session_max_tokens
        if max_tokens is not None:
            used = sum(session.tokens.get(kind, 0) for kind in TOKEN_TYPES if kind != "reasoning")
            if used + session.held_tokens + reservation.estimate_tokens > max_tokens:
                return Admission(False, "session_tokens", session.spent, budget)
        return None

    def _release(self, hold: _Hold) -> None:
        if hold.session_key is not None:
            session = self._sessions.get(hold.session_key)
            if session is not None:
                session.held = max(session.held - hold.usd, 0.0)
                session.held_tokens = max(session.held_tokens - hold.tokens, 0)
                session.held_calls = max(session.held_calls - (1 if hold.counted else 0), 0)
        for key in hold.window_keys:
            totals = self._windows.get(key)
            if totals is not None:
                totals.held = max(totals.held - hold.usd, 0.0)

    def _expire(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, call_id = heapq.heappop(self._expiries)
            hold = self._holds.get(call_id)
            if hold is not None and hold.expires_at <= now:
                del self._holds[call_id]
                self._release(hold)
        if now - self._last_sweep < 1.0:  # expired sessions and windows are swept at most once a second
            return
        self._last_sweep = now
        for mapping in (self._sessions, self._windows):
            stale = [key for key, totals in mapping.items() if totals.expires_at <= now]
            for key in stale:
                del mapping[key]
        stale_ids = [call_id for call_id, expires_at in self._settled.items() if expires_at <= now]
        for call_id in stale_ids:
            del self._settled[call_id]


def _state(session: _Session) -> SessionState:
    return SessionState(
        session_id=session.session_id,
        spent_usd=session.spent,
        held_usd=session.held,
        tokens=dict(session.tokens),
        llm_calls=session.llm_calls,
        tool_calls=session.tool_calls,
        blocked_reason=session.blocked,
        last_activity=session.last_activity or None,
    )
