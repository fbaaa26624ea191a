"""The embedded store: one process, the same semantics as the Redis store (holds and sessions expire too)."""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final, TypeVar

from llmguard.errors import BlockReason
from llmguard.policy import loop_repeats, signature_digest
from llmguard.store.base import Admission, Reservation, SessionState, Settlement, SettleResult
from llmguard.store.redis_schema import feature_digest

TOKEN_TYPES = ("input", "cache_read", "cache_write", "output", "reasoning")
WINDOW_TTL_SECONDS: Final = 2 * 86400


@dataclass(slots=True)
class _Totals:
    spent: float = 0.0
    held: float = 0.0
    expires_at: float = 0.0
    queued: float = math.inf  # the due time of this entry's live slot in its expiry heap (inf: none yet)


@dataclass(slots=True)
class _Session(_Totals):
    session_id: str = ""
    held_tokens: int = 0
    held_calls: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    llm_calls: int = 0
    tool_calls: int = 0
    history: deque[str] = field(default_factory=deque)
    blocked: BlockReason | None = None  # only `loop_detected`: any other denial is for that one call
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


_T = TypeVar("_T", bound=_Totals)


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._windows: dict[str, _Totals] = {}
        self._holds: dict[str, _Hold] = {}
        self._settled: dict[str, float] = {}  # settled call id -> until when a duplicate settle is recognised
        # What expires, as heaps of (due, key) popped lazily, so no operation scans everything. A session's or a
        # window's expiry moves with use: its entry is pushed again, at the new time, when the old one comes due.
        self._hold_expiries: list[tuple[float, str]] = []
        self._settled_expiries: list[tuple[float, str]] = []
        self._session_expiries: list[tuple[float, str]] = []
        self._window_expiries: list[tuple[float, str]] = []

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
                    (_feature_window(day, reservation.feature), caps.feature_daily_budget_usd, "feature_daily_budget")
                )
            if caps.daily_budget_usd is not None:
                windows.append((_daily_window(day), caps.daily_budget_usd, "daily_budget"))
            estimate = reservation.estimate_usd
            if session is not None:
                # A denial applies to this call only (a later, smaller call may fit): nothing is written.
                denial = self._deny_session(session, reservation)
                if denial is not None:
                    return denial
            for key, cap, window_reason in windows:
                totals = self._windows.get(key) or _Totals()
                if totals.spent + totals.held + estimate > cap:
                    return Admission(False, window_reason, spent_usd=totals.spent, limit_usd=cap)
            expires_at = now + reservation.hold_ttl_seconds
            for key, _, _ in windows:
                self._window(key, now).held += estimate
            if session is not None:
                session.held += estimate
                session.held_tokens += reservation.estimate_tokens
                session.held_calls += 1 if reservation.count_call else 0
                session.last_activity = now
                self._keep_session(reservation.session_key, session, now + reservation.session_ttl_seconds)
            self._holds[reservation.call_id] = _Hold(
                estimate,
                reservation.estimate_tokens,
                reservation.count_call,
                expires_at,
                reservation.session_key,
                tuple(key for key, _, _ in windows),
            )
            heapq.heappush(self._hold_expiries, (expires_at, reservation.call_id))
            return Admission(True, spent_usd=session.spent if session else 0.0, limit_usd=caps.session_budget_usd)

    def settle_sync(self, settlement: Settlement) -> SettleResult:
        now = time.time()
        with self._lock:
            self._expire(now)
            if settlement.call_id in self._settled:
                return SettleResult(0.0, already_settled=True)
            # The marker only has to outlive duplicate settles of this call, which come within its hold's lifetime.
            settled_until = now + settlement.hold_ttl_seconds
            self._settled[settlement.call_id] = settled_until
            heapq.heappush(self._settled_expiries, (settled_until, settlement.call_id))
            hold = self._holds.pop(settlement.call_id, None)
            held = hold.usd if hold is not None else 0.0
            charged = settlement.cost_usd if settlement.cost_usd is not None else max(settlement.estimate_usd, held)
            if hold is not None:
                self._release(hold)
            day = time.strftime("%Y-%m-%d", time.gmtime(now))
            for key in (_feature_window(day, settlement.feature), _daily_window(day)):
                self._window(key, now).spent += charged
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
            self._keep_session(settlement.session_key, session, now + settlement.session_ttl_seconds)
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
            self._keep_session(reservation.session_key, session, now + reservation.session_ttl_seconds)
        return session

    def _keep_session(self, session_key: str | None, session: _Session, expires_at: float) -> None:
        assert session_key is not None
        _schedule(self._session_expiries, session_key, session, expires_at)

    def _window(self, key: str, now: float) -> _Totals:
        """A window to charge or hold in, created if need be; every use keeps it for two more days."""
        totals = self._windows.get(key)
        if totals is None:
            totals = self._windows[key] = _Totals()
        _schedule(self._window_expiries, key, totals, max(totals.expires_at, now + WINDOW_TTL_SECONDS))
        return totals

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
        """Drop what is due, popping each heap only as far as now: O(log n) per entry, amortised over operations."""
        holds = self._hold_expiries
        while holds and holds[0][0] <= now:
            _, call_id = heapq.heappop(holds)
            hold = self._holds.get(call_id)
            if hold is not None and hold.expires_at <= now:
                del self._holds[call_id]
                self._release(hold)
        settled = self._settled_expiries
        while settled and settled[0][0] <= now:
            _, call_id = heapq.heappop(settled)
            if self._settled.get(call_id, math.inf) <= now:  # not settled again since (a later entry has that)
                del self._settled[call_id]
        _expire_totals(self._sessions, self._session_expiries, now)
        _expire_totals(self._windows, self._window_expiries, now)


def _schedule(heap: list[tuple[float, str]], key: str, totals: _Totals, expires_at: float) -> None:
    """Set when `totals` (under `key`) expires. Its heap entry is pushed again only if it has to come due sooner."""
    totals.expires_at = expires_at
    if expires_at < totals.queued:
        totals.queued = expires_at
        heapq.heappush(heap, (expires_at, key))


def _expire_totals(mapping: dict[str, _T], heap: list[tuple[float, str]], now: float) -> None:
    while heap and heap[0][0] <= now:
        due, key = heapq.heappop(heap)
        totals = mapping.get(key)
        if totals is None or totals.queued != due:
            continue  # gone already, or a stale entry (its key has a sooner one, or was created again since)
        if totals.expires_at <= now:
            del mapping[key]
        else:  # used since it was queued: queue it again at its new expiry
            totals.queued = totals.expires_at
            heapq.heappush(heap, (totals.expires_at, key))


def _feature_window(day: str, feature: str) -> str:
    return f"f:{day}:{feature_digest(feature)}"  # a digest: a long feature name is not kept in every key


def _daily_window(day: str) -> str:
    return f"d:{day}"


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
