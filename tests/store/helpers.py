"""Builders for the values that cross the store interface, and one face for the async and sync store APIs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from llmguard.store.base import Admission, Caps, Reservation, SessionState, Settlement, SettleResult
from llmguard.store.keys import session_key
from llmguard.store.memory import MemoryStore
from llmguard.store.redis import RedisStore

Store = MemoryStore | RedisStore


def reservation(
    call_id: str,
    session: str | None = "s",
    *,
    usd: float = 0.125,
    tokens: int = 100,
    caps: Caps | None = None,
    feature: str = "chat",
    hold_ttl: int = 600,
    session_ttl: int = 3600,
    count_call: bool = True,
) -> Reservation:
    return Reservation(
        call_id=call_id,
        session_key=None if session is None else session_key(session),
        session_id=session,
        feature=feature,
        estimate_usd=usd,
        estimate_tokens=tokens,
        caps=caps or Caps(),
        hold_ttl_seconds=hold_ttl,
        session_ttl_seconds=session_ttl,
        count_call=count_call,
    )


def settlement(
    call_id: str,
    session: str | None = "s",
    *,
    cost: float | None = 0.125,
    estimate: float = 0.0,
    tokens: dict[str, int] | None = None,
    tools: Sequence[str] = (),
    feature: str = "chat",
    count_call: bool = True,
    threshold: int = 5,
    warn: int = 3,
    history: int = 25,
    session_ttl: int = 3600,
) -> Settlement:
    return Settlement(
        call_id=call_id,
        session_key=None if session is None else session_key(session),
        session_id=session,
        feature=feature,
        cost_usd=cost,
        estimate_usd=estimate,
        tokens=dict(tokens or {}),
        tool_signatures=list(tools),
        count_call=count_call,
        loop_repeat_threshold=threshold,
        loop_warn_threshold=warn,
        loop_history=history,
        hold_ttl_seconds=600,
        session_ttl_seconds=session_ttl,
    )


class Api:
    """The store through its async methods, or through their sync twins (same calls, same answers)."""

    def __init__(self, store: Store, mode: Literal["async", "sync"]) -> None:
        self.store = store
        self.mode = mode

    async def reserve(self, r: Reservation) -> Admission:
        return await self.store.reserve(r) if self.mode == "async" else self.store.reserve_sync(r)

    async def settle(self, s: Settlement) -> SettleResult:
        return await self.store.settle(s) if self.mode == "async" else self.store.settle_sync(s)

    async def get(self, session: str) -> SessionState | None:
        key = session_key(session)
        return await self.store.get_session(key) if self.mode == "async" else self.store.get_session_sync(key)

    async def end(self, session: str) -> SessionState | None:
        key = session_key(session)
        return await self.store.end_session(key) if self.mode == "async" else self.store.end_session_sync(key)

    async def top(self, limit: int) -> list[SessionState]:
        return await self.store.top_sessions(limit) if self.mode == "async" else self.store.top_sessions_sync(limit)

    async def active(self, within: int) -> int:
        if self.mode == "async":
            return await self.store.active_sessions(within)
        return self.store.active_sessions_sync(within)

    async def reserve_many(self, reservations: Sequence[Reservation]) -> list[Admission]:
        """All at once: gathered on the event loop, or from as many threads."""
        if self.mode == "async":
            return list(await asyncio.gather(*(self.store.reserve(r) for r in reservations)))
        with ThreadPoolExecutor(max_workers=len(reservations)) as pool:
            return list(pool.map(self.store.reserve_sync, reservations))
