"""The failure policy around a store: short timeouts are the primary's job; this decides what an outage means.

`open`: calls go on, accounted in a per-process in-memory store, and every failed operation is counted. The
primary is tried again on every call, so recovery is automatic. `closed`: calls are refused (`store_unavailable`).
Nothing from the store ever reaches the caller as an unexpected exception.

Every call is settled exactly once, in the store that admitted it. A settle the primary failed to confirm may still
have been applied (the server went down after running it), so it is not moved to the fallback: it is kept and
sent again once the primary answers, which is safe because settling is idempotent by call id.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Literal

from llmguard.store.base import Admission, BudgetStore, Reservation, SessionState, Settlement, SettleResult
from llmguard.store.memory import MemoryStore

logger = logging.getLogger("llmguard")

MAX_UNSETTLED = 10_000  # settlements waiting for the primary to come back; past that the oldest are dropped
MAX_FALLBACK_CALLS = 100_000


class FailoverStore:
    def __init__(
        self,
        primary: BudgetStore,
        *,
        policy: Literal["open", "closed"],
        on_error: Callable[[str], None],
    ) -> None:
        self.primary = primary
        self.remote = not isinstance(primary, MemoryStore)  # its operations do I/O: settle them off the hot path
        self.fallback = primary if isinstance(primary, MemoryStore) else MemoryStore()
        self._policy = policy
        self._on_error = on_error
        self._admitted_by_fallback: set[str] = set()
        self._unsettled: deque[Settlement] = deque(maxlen=MAX_UNSETTLED)
        self._flushing = threading.Lock()

    def _failed(self, operation: str, exc: Exception) -> None:
        self._on_error(operation)
        logger.warning("llmguard: budget store %s failed: %r", operation, exc)

    async def reserve(self, reservation: Reservation) -> Admission:
        try:
            admission = await self.primary.reserve(reservation)
        except Exception as exc:
            self._failed("reserve", exc)
            return self._fallback_reserve(reservation)
        await self._settle_unsettled()
        return admission

    def reserve_sync(self, reservation: Reservation) -> Admission:
        try:
            admission = self.primary.reserve_sync(reservation)
        except Exception as exc:
            self._failed("reserve", exc)
            return self._fallback_reserve(reservation)
        self._settle_unsettled_sync()
        return admission

    async def settle(self, settlement: Settlement) -> SettleResult:
        if settlement.call_id in self._admitted_by_fallback:
            return self._fallback_settle(settlement)
        try:
            result = await self.primary.settle(settlement)
        except Exception as exc:
            self._failed("settle", exc)
            return self._keep(settlement)
        await self._settle_unsettled()
        return result

    def settle_sync(self, settlement: Settlement) -> SettleResult:
        if settlement.call_id in self._admitted_by_fallback:
            return self._fallback_settle(settlement)
        try:
            result = self.primary.settle_sync(settlement)
        except Exception as exc:
            self._failed("settle", exc)
            return self._keep(settlement)
        self._settle_unsettled_sync()
        return result

    def _fallback_reserve(self, reservation: Reservation) -> Admission:
        if self._policy == "closed":
            return Admission(False, "store_unavailable")
        if len(self._admitted_by_fallback) >= MAX_FALLBACK_CALLS:  # calls that never settled (a crash): forget
            self._admitted_by_fallback.clear()
        self._admitted_by_fallback.add(reservation.call_id)
        return self.fallback.reserve_sync(reservation)

    def _fallback_settle(self, settlement: Settlement) -> SettleResult:
        self._admitted_by_fallback.discard(settlement.call_id)
        return self.fallback.settle_sync(settlement)

    def _keep(self, settlement: Settlement) -> SettleResult:
        self._unsettled.append(settlement)
        charged = settlement.cost_usd if settlement.cost_usd is not None else settlement.estimate_usd
        return SettleResult(charged)

    async def _settle_unsettled(self) -> None:
        # One flush at a time: concurrent calls would otherwise send, and drop, the same settlement twice.
        if not self._unsettled or not self._flushing.acquire(blocking=False):
            return
        try:
            while self._unsettled:
                settlement = self._unsettled.popleft()
                try:
                    await self.primary.settle(settlement)
                except Exception as exc:
                    self._unsettled.appendleft(settlement)
                    self._failed("settle", exc)
                    return
        finally:
            self._flushing.release()

    def _settle_unsettled_sync(self) -> None:
        if not self._unsettled or not self._flushing.acquire(blocking=False):
            return
        try:
            while self._unsettled:
                settlement = self._unsettled.popleft()
                try:
                    self.primary.settle_sync(settlement)
                except Exception as exc:
                    self._unsettled.appendleft(settlement)
                    self._failed("settle", exc)
                    return
        finally:
            self._flushing.release()

    async def get_session(self, session_key: str) -> SessionState | None:
        try:
            await self._settle_unsettled()
            return await self.primary.get_session(session_key)
        except Exception as exc:
            self._failed("get_session", exc)
        return self.fallback.get_session_sync(session_key)

    def get_session_sync(self, session_key: str) -> SessionState | None:
        try:
            return self.primary.get_session_sync(session_key)
        except Exception as exc:
            self._failed("get_session", exc)
        return self.fallback.get_session_sync(session_key)

    async def end_session(self, session_key: str) -> SessionState | None:
        ended = self.fallback.end_session_sync(session_key) if self.fallback is not self.primary else None
        try:
            return await self.primary.end_session(session_key) or ended
        except Exception as exc:
            self._failed("end_session", exc)
        return ended

    def end_session_sync(self, session_key: str) -> SessionState | None:
        ended = self.fallback.end_session_sync(session_key) if self.fallback is not self.primary else None
        try:
            return self.primary.end_session_sync(session_key) or ended
        except Exception as exc:
            self._failed("end_session", exc)
        return ended

    async def top_sessions(self, limit: int) -> list[SessionState]:
        try:
            return await self.primary.top_sessions(limit)
        except Exception as exc:
            self._failed("top_sessions", exc)
        return self.fallback.top_sessions_sync(limit)

    async def active_sessions(self, within_seconds: int) -> int:
        try:
            return await self.primary.active_sessions(within_seconds)
        except Exception as exc:
            self._failed("active_sessions", exc)
        return self.fallback.active_sessions_sync(within_seconds)

    async def aclose(self) -> None:
        await self.primary.aclose()

    def close(self) -> None:
        self.primary.close()
