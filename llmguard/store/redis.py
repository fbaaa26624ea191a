"""The Redis store: the memory store's semantics, shared by every worker, one Lua script per step.

A Redis Cluster runs a script on one slot only, and each scope (a session, a day, a feature's day, a call outside any
session) is one hash tag, so a reservation runs one script per scope (session first, then each window) and gives
back the holds it took when a later scope denies it; a settle likewise. Time is the server's (`TIME`).

Beside this module: `redis_schema` (key layout, pico-dollar amounts, decoding replies), `redis_steps` (the Lua
scripts and the drivers that run an operation's steps) and `redis_clients` (the connections).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from time import time as _wall_clock
from typing import Any, Final, TypeVar

from redis.exceptions import RedisError

from llmguard.errors import BlockReason
from llmguard.policy import signature_digest
from llmguard.settings import GuardSettings
from llmguard.store.base import Admission, Reservation, SessionState, Settlement, SettleResult
from llmguard.store.redis_clients import RedisClients
from llmguard.store.redis_schema import (
    PICO,
    RedisKeys,
    block_reason,
    count_cap,
    feature_digest,
    pico_cap,
    scope_tag,
    session_state,
    text,
    to_pico,
    to_usd,
    utf8,
)
from llmguard.store.redis_steps import (
    ACTIVE,
    CALL_RESERVE,
    CALL_SETTLE,
    FAILURES,
    INDEX_TRIM,
    RELEASE,
    SESSION_END,
    SESSION_GET,
    SESSION_RESERVE,
    SESSION_SETTLE,
    WINDOW_RESERVE,
    WINDOW_SETTLE,
    Command,
    Eval,
    Step,
    Steps,
    run_steps,
    run_steps_sync,
)

# PICO, FAILURES and SESSION_RESERVE are re-exported: callers and tests import them from here.
__all__ = ["FAILURES", "PICO", "SESSION_RESERVE", "RedisStore"]

T = TypeVar("T")

DAY_MS: Final = 86_400_000
WINDOW_TTL_MS: Final = 2 * DAY_MS
# At most this many index entries too old for a live session are checked per `active` call.
INDEX_TRIM_BATCH: Final = 1000


class RedisStore:
    def __init__(self, settings: GuardSettings) -> None:
        if settings.redis_url is None:
            raise ValueError("RedisStore needs settings.redis_url")
        self._keys = RedisKeys(settings.redis_prefix)
        self._clients = RedisClients(
            settings.redis_url.get_secret_value(),
            cluster=settings.redis_cluster,
            timeout=settings.redis_timeout_seconds,
            connect_timeout=settings.redis_connect_timeout_seconds,
        )
        self._session_ttl_ms = settings.session_ttl_seconds * 1000
        self._clock_offset_ms = 0.0

    # -- async API --

    async def reserve(self, reservation: Reservation) -> Admission:
        return await self._run(self._reserve(reservation))

    async def settle(self, settlement: Settlement) -> SettleResult:
        return await self._run(self._settle(settlement))

    async def get_session(self, session_key: str) -> SessionState | None:
        return await self._run(self._get(session_key))

    async def end_session(self, session_key: str) -> SessionState | None:
        return await self._run(self._end(session_key))

    async def top_sessions(self, limit: int) -> list[SessionState]:
        return await self._run(self._top(limit))

    async def active_sessions(self, within_seconds: int) -> int:
        return await self._run(self._active(within_seconds))

    async def aclose(self) -> None:
        """Close this loop's client (and the sync one). Clients of other loops are closed by `aclose` there."""
        await self._clients.aclose()

    async def _run(self, steps: Steps[T]) -> T:
        return await run_steps(await self._clients.for_running_loop(), steps)

    # -- sync API --

    def reserve_sync(self, reservation: Reservation) -> Admission:
        return self._run_sync(self._reserve(reservation))

    def settle_sync(self, settlement: Settlement) -> SettleResult:
        return self._run_sync(self._settle(settlement))

    def get_session_sync(self, session_key: str) -> SessionState | None:
        return self._run_sync(self._get(session_key))

    def end_session_sync(self, session_key: str) -> SessionState | None:
        return self._run_sync(self._end(session_key))

    def top_sessions_sync(self, limit: int) -> list[SessionState]:
        return self._run_sync(self._top(limit))

    def active_sessions_sync(self, within_seconds: int) -> int:
        return self._run_sync(self._active(within_seconds))

    def close(self) -> None:
        self._clients.close()

    def _run_sync(self, steps: Steps[T]) -> T:
        return run_steps_sync(self._clients.sync(), steps)

    # -- the operations, as steps (see `redis_steps`) --

    def _reserve(self, reservation: Reservation) -> Steps[Admission]:
        r, caps = reservation, reservation.caps
        usd = to_pico(r.estimate_usd)
        hold_ttl_ms = r.hold_ttl_seconds * 1000
        feature = feature_digest(r.feature) if caps.feature_daily_budget_usd is not None else ""
        windows: list[tuple[str | None, float, BlockReason]] = []
        if caps.feature_daily_budget_usd is not None:
            windows.append((feature, caps.feature_daily_budget_usd, "feature_daily_budget"))
        if caps.daily_budget_usd is not None:
            windows.append((None, caps.daily_budget_usd, "daily_budget"))
        # What gives back each hold taken so far. A step that failed is not given back: against a hung server that
        # would double the time every call spends failing; if it did take a hold, the hold expires.
        holding: list[Eval] = []
        spent = 0
        expiry = ""
        try:
            if r.session_key is not None:
                session = self._keys.session(r.session_key)[:3]
                admitted, reason, spent_raw, now, hold_expiry, before = yield Eval(
                    SESSION_RESERVE,
                    session,
                    [
                        r.call_id, utf8(r.session_id or ""), usd, r.estimate_tokens, int(r.count_call),
                        pico_cap(caps.session_budget_usd), count_cap(caps.session_max_llm_calls),
                        count_cap(caps.session_max_tool_calls), count_cap(caps.session_max_tokens),
                        hold_ttl_ms, r.session_ttl_seconds * 1000, int(caps.daily_budget_usd is not None), feature,
                    ],
                )  # fmt: skip
                now = self._observe(now)
                spent = int(spent_raw)
                if not admitted:
                    return Admission(False, block_reason(reason), to_usd(spent), caps.session_budget_usd)
                holding.append(Eval(RELEASE, session, [r.call_id, str(now), before or b""]))
                day, check_day, expiry = now // DAY_MS, False, str(int(float(hold_expiry)))
            else:
                # No script has told the server's day yet: the window script checks the guess.
                day, check_day = self._guess_day(), True
            for window_feature, cap, reason in windows:
                for _ in range(2):
                    window = self._keys.window(day, window_feature)
                    status, value, now, hold_expiry = yield Eval(
                        WINDOW_RESERVE,
                        window,
                        [r.call_id, usd, pico_cap(cap), expiry, hold_ttl_ms, WINDOW_TTL_MS, day if check_day else ""],
                    )
                    self._observe(now)
                    if status != -1:
                        break
                    day = int(value)
                else:
                    raise RedisError("the server's UTC day kept changing during a reservation")
                check_day = False
                if status != 1:
                    yield from _give_back(holding)
                    return Admission(False, reason, to_usd(int(value)), cap)
                holding.append(Eval(RELEASE, window, [r.call_id, "", ""]))
                expiry = str(int(float(hold_expiry)))
            if r.session_key is None:
                daily = int(caps.daily_budget_usd is not None)
                yield Eval(CALL_RESERVE, [self._keys.call(r.call_id)], [usd, expiry, hold_ttl_ms, day, daily, feature])
        except FAILURES:
            yield from _give_back(holding)
            raise
        return Admission(True, spent_usd=to_usd(spent), limit_usd=caps.session_budget_usd)

    def _settle(self, settlement: Settlement) -> Steps[SettleResult]:
        s = settlement
        cost: str | int = "" if s.cost_usd is None else to_pico(s.cost_usd)
        estimate = to_pico(s.estimate_usd)
        ttl_ms = s.session_ttl_seconds * 1000
        if s.session_key is not None:
            tokens = [item for kind, count in s.tokens.items() for item in (kind, count)]
            digests = [signature_digest(signature) for signature in s.tool_signatures]
            already, charged, spent, repeats, warning, blocked, now, hold_day, hold_daily, hold_feature = yield Eval(
                SESSION_SETTLE,
                self._keys.session(s.session_key),
                [
                    s.call_id, utf8(s.session_id or ""), cost, estimate, int(s.count_call), ttl_ms,
                    s.loop_history, s.loop_repeat_threshold, s.loop_warn_threshold, len(s.tokens), *tokens, *digests,
                ],
            )  # fmt: skip
            result = SettleResult(
                charged_usd=to_usd(int(charged)),
                session_spent_usd=to_usd(int(spent)),
                loop_repeats=int(repeats),
                loop_warning=bool(warning),
                blocked_reason=block_reason(blocked),
            )
        else:
            already, charged, now, hold_day, hold_daily, hold_feature = yield Eval(
                CALL_SETTLE, [self._keys.call(s.call_id)], [cost, estimate, ttl_ms]
            )
            result = SettleResult(charged_usd=to_usd(int(charged)))
        if already:
            return SettleResult(charged_usd=0.0, already_settled=True)
        now = self._observe(now)
        day, held_day = now // DAY_MS, int(hold_day)
        feature, held_feature = feature_digest(s.feature), text(hold_feature)
        pipeline: list[Eval | Command] = []
        # A hold taken on another day, or for another feature, is given back where it was taken.
        if held_feature and (held_feature != feature or held_day != day):
            pipeline.append(Eval(RELEASE, self._keys.window(held_day, held_feature), [s.call_id, "", ""]))
        if text(hold_daily) == "1" and held_day != day:
            pipeline.append(Eval(RELEASE, self._keys.window(held_day, None), [s.call_id, "", ""]))
        for window in (self._keys.window(day, feature), self._keys.window(day, None)):
            pipeline.append(Eval(WINDOW_SETTLE, window, [s.call_id, int(charged), WINDOW_TTL_MS]))
        if s.session_key is not None:
            # Indexes for `top` and `active`, not the source of truth: they may lag, never decide a charge.
            member = scope_tag(s.session_key)
            index_ttl = max(ttl_ms, self._session_ttl_ms)
            pipeline += [
                Command(("ZADD", self._keys.spend_index, "GT", result.session_spent_usd, member)),
                Command(("ZADD", self._keys.active_index, "GT", now, member)),
                Command(("PEXPIRE", self._keys.spend_index, index_ttl)),
                Command(("PEXPIRE", self._keys.active_index, index_ttl)),
            ]
        yield pipeline
        return result

    def _get(self, session_key: str) -> Steps[SessionState | None]:
        raw = yield Eval(SESSION_GET, self._keys.session(session_key)[:3], [])
        return session_state(raw) if raw else None

    def _end(self, session_key: str) -> Steps[SessionState | None]:
        state, holds, expiries, _, hist = self._keys.session(session_key)
        raw = yield Eval(SESSION_END, [state, holds, expiries, hist], [])
        member = scope_tag(session_key)
        yield [Command(("ZREM", self._keys.spend_index, member)), Command(("ZREM", self._keys.active_index, member))]
        return session_state(raw) if raw else None

    def _top(self, limit: int) -> Steps[list[SessionState]]:
        # By member: a session overtaken by another between two pages moves down into the next one, and must not be
        # listed twice.
        found: dict[bytes, SessionState] = {}
        start = 0
        while len(found) < limit:
            members = yield Command(("ZREVRANGE", self._keys.spend_index, start, start + limit - 1))
            if not members:
                break
            raws = yield [Eval(SESSION_GET, self._keys.session(text(m))[:3], []) for m in members]
            stale = [member for member, raw in zip(members, raws, strict=True) if not raw]
            for member, raw in zip(members, raws, strict=True):
                if raw:
                    found.setdefault(member, session_state(raw))
            start += len(members) - len(stale)
            if stale:  # sessions that expired since their last settle
                yield Command(("ZREM", self._keys.spend_index, *stale))
        ranked = sorted(found.values(), key=lambda state: state.spent_usd, reverse=True)
        return ranked[: max(limit, 0)]

    def _active(self, within_seconds: int) -> Steps[int]:
        keep_ms = max(self._session_ttl_ms, within_seconds * 1000)
        active = self._keys.active_index
        count, cutoff, old = yield Eval(ACTIVE, [active], [within_seconds * 1000, keep_ms, INDEX_TRIM_BATCH])
        if old:
            # Entries last active longer ago than a session lives: the sessions that are gone (expired) leave both
            # indexes. Two indexes in two slots, so two steps; one still alive (its TTL moved on by a reservation)
            # stays. Only upkeep: if it fails, the next call does it.
            with contextlib.suppress(*FAILURES):
                exists = yield [Command(("EXISTS", self._keys.session(text(member))[0])) for member in old]
                gone = [member for member, found in zip(old, exists, strict=True) if not found]
                if gone:
                    removed = yield Eval(INDEX_TRIM, [active], [cutoff, *gone])
                    if removed:
                        yield Command(("ZREM", self._keys.spend_index, *removed))
        return int(count)

    # -- server time --

    def _observe(self, now_ms: int) -> int:
        self._clock_offset_ms = now_ms - _wall_clock() * 1000
        return int(now_ms)

    def _guess_day(self) -> int:
        return int((_wall_clock() * 1000 + self._clock_offset_ms) // DAY_MS)


def _give_back(holding: list[Eval]) -> Generator[Step, Any, None]:
    for release in reversed(holding):
        with contextlib.suppress(*FAILURES):  # if it fails, the hold expires on its own
            yield release
    holding.clear()
