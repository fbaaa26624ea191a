"""The failure policy around a store: short timeouts are the primary's job; this decides what an outage means.

`open`: calls go on, accounted in a per-process in-memory store, and every failed operation is counted. The
primary is tried again on every call, so recovery is automatic. `closed`: calls are refused (`store_unavailable`).
Nothing from the store ever reaches the caller as an unexpected exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from llmguard.store.base import Admission, BudgetStore, Reservation, SessionState, Settlement, SettleResult
from llmguard.store.memory import MemoryStore

logger = logging.getLogger("llmguard")


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
        self._fallback = primary if isinstance(primary, MemoryStore) else MemoryStore()
        self._policy = policy
        self._on_error = on_error

    def _failed(self, operation: str, exc: Exception) -> None:
        self._on_error(operation)
        logger.warning("llmguard: budget store %s failed: %r", operation, exc)

    def _unavailable(self) -> Admission:
        return Admission(False, "store_unavailable")

    async def reserve(self, reservation: Reservation) -> Admission:
        try:
            return await self.primary.reserve(reservation)
        except Exception as exc:
            self._failed("reserve", exc)
        return self._fallback.reserve_sync(reservation) if self._policy == "open" else self._unavailable()

    def reserve_sync(self, reservation: Reservation) -> Admission:
        try:
            return self.primary.reserve_sync(reservation)
        except Exception as exc:
            self._failed("reserve", exc)
        return self._fallback.reserve_sync(reservation) if self._policy == "open" else self._unavailable()

    async def settle(self, settlement: Settlement) -> SettleResult:
        try:
            return await self.primary.settle(settlement)
        except Exception as exc:
            self._failed("settle", exc)
        return self._fallback.settle_sync(settlement)

    def settle_sync(self, settlement: Settlement) -> SettleResult:
        try:
            return self.primary.settle_sync(settlement)
        except Exception as exc:
            self._failed("settle", exc)
        return self._fallback.settle_sync(settlement)

    async def get_session(self, session_key: str) -> SessionState | None:
        try:
            return await self.primary.get_session(session_key)
        except Exception as exc:
            self._failed("get_session", exc)
        return self._fallback.get_session_sync(session_key)

    def get_session_sync(self, session_key: str) -> SessionState | None:
        try:
            return self.primary.get_session_sync(session_key)
        except Exception as exc:
            self._failed("get_session", exc)
        return self._fallback.get_session_sync(session_key)

    async def end_session(self, session_key: str) -> SessionState | None:
        ended = self._fallback.end_session_sync(session_key) if self._fallback is not self.primary else None
        try:
            return await self.primary.end_session(session_key) or ended
        except Exception as exc:
            self._failed("end_session", exc)
        return ended

    def end_session_sync(self, session_key: str) -> SessionState | None:
        ended = self._fallback.end_session_sync(session_key) if self._fallback is not self.primary else None
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
        return self._fallback.top_sessions_sync(limit)

    async def active_sessions(self, within_seconds: int) -> int:
        try:
            return await self.primary.active_sessions(within_seconds)
        except Exception as exc:
            self._failed("active_sessions", exc)
        return self._fallback.active_sessions_sync(within_seconds)

    async def aclose(self) -> None:
        await self.primary.aclose()

    def close(self) -> None:
        self.primary.close()
