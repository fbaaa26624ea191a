"""The Redis store: the memory store's semantics, shared by every worker, one Lua script per step.

Amounts are integer pico-dollars (`HINCRBY`): sums are exact, and rounding a call's cost to the pico-dollar moves it
by at most 5e-13 USD, so even a few thousand calls stay within 1e-9 USD of the float sum of their costs (nano-dollars
typically drift by 1e-8 over a thousand calls). A signed 64-bit counter still holds 9.2 million USD per key.

Every key of a scope shares one hash tag: `<prefix>:{<session key>}:…` for a session, `{d:<UTC day>}` for the day,
`{f:<UTC day>:<feature digest>}` for a feature's day and `{c:<call id>}` for a call outside any session. A Redis
Cluster runs a script on one slot only, so a reservation runs one script per scope (session first, then each window)
and gives back the holds it took when a later scope denies it; a settle likewise. Time is the server's (`TIME`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import threading
import weakref
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from importlib.resources import files
from time import time as _wall_clock
from typing import Any, Final, TypeVar, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.retry import Retry

from llmguard.errors import BlockReason
from llmguard.policy import signature_digest
from llmguard.settings import GuardSettings
from llmguard.store.base import Admission, Reservation, SessionState, Settlement, SettleResult
from llmguard.store.keys import session_key as encode_session_id

__all__ = ["RedisStore"]

T = TypeVar("T")

PICO: Final = 10**12
DAY_MS: Final = 86_400_000
WINDOW_TTL_MS: Final = 2 * DAY_MS
# What Redis raises when it fails (cluster errors are not `RedisError`s).
FAILURES: Final = (RedisError, RedisClusterException)
# A burst of calls waits for a pooled connection rather than failing at once; the cluster client cannot wait, so
# each node gets room for a bigger burst.
POOL_CONNECTIONS: Final = 100
POOL_WAIT_SECONDS: Final = 1.0
CLUSTER_CONNECTIONS: Final = 1000
_ENCODED = re.compile(r"[A-Za-z0-9_.\-]{1,128}|~[0-9a-f]{64}")


class _Script:
    """A Lua script from `store/lua`, behind the shared prelude; run by EVALSHA, loaded again on NOSCRIPT."""

    def __init__(self, name: str) -> None:
        folder = files("llmguard.store") / "lua"
        self.name = name
        self.source = (folder / "prelude.lua").read_text("utf-8") + (folder / f"{name}.lua").read_text("utf-8")
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


SESSION_RESERVE = _Script("session_reserve")
WINDOW_RESERVE = _Script("window_reserve")
CALL_RESERVE = _Script("call_reserve")
RELEASE = _Script("release")
SESSION_SETTLE = _Script("session_settle")
WINDOW_SETTLE = _Script("window_settle")
CALL_SETTLE = _Script("call_settle")
SESSION_GET = _Script("session_get")
SESSION_END = _Script("session_end")
ACTIVE = _Script("active")


@dataclass(frozen=True, slots=True)
class _Eval:
    script: _Script
    keys: Sequence[str]
    args: Sequence[str | int | bytes]


@dataclass(frozen=True, slots=True)
class _Command:
    args: tuple[str | int | float | bytes, ...]


# The operations are written once, as generators that yield what to send to Redis (a script, a command, or a list of
# independent ones to pipeline) and get the replies back; one driver runs them on the async client, one on the sync.
_Op = _Eval | _Command | list[_Eval | _Command]
_Steps = Generator[_Op, Any, T]


@dataclass(slots=True)
class _LoopClient:
    client: Any
    ready: bool
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RedisStore:
    def __init__(self, settings: GuardSettings) -> None:
        if settings.redis_url is None:
            raise ValueError("RedisStore needs settings.redis_url")
        prefix = settings.redis_prefix
        if "{" in prefix or "}" in prefix:
            raise ValueError("redis_prefix must not contain '{' or '}': the session is the hash tag")
        self._url = settings.redis_url.get_secret_value()
        self._cluster = settings.redis_cluster
        self._timeout = settings.redis_timeout_seconds
        self._connect_timeout = settings.redis_connect_timeout_seconds
        self._prefix = prefix
        self._session_ttl_ms = settings.session_ttl_seconds * 1000
        self._spend_index = f"{prefix}:sessions:spend"
        self._active_index = f"{prefix}:sessions:active"
        self._clock_offset_ms = 0.0
        # Connections belong to the event loop that opened them: one async client per running loop.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = weakref.WeakKeyDictionary()
        self._sync: Any = None
        self._sync_lock = threading.Lock()

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
        entry = self._loops.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry.client.aclose()
        self.close()

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
        with self._sync_lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()

    # -- the operations --

    def _reserve(self, reservation: Reservation) -> _Steps[Admission]:
        r, caps = reservation, reservation.caps
        usd = _pico(r.estimate_usd)
        hold_ttl_ms = r.hold_ttl_seconds * 1000
        feature = _digest(r.feature) if caps.feature_daily_budget_usd is not None else ""
        windows: list[tuple[str | None, float, BlockReason]] = []
        if caps.feature_daily_budget_usd is not None:
            windows.append((feature, caps.feature_daily_budget_usd, "feature_daily_budget"))
        if caps.daily_budget_usd is not None:
            windows.append((None, caps.daily_budget_usd, "daily_budget"))
        # What gives back each hold taken so far. A step that failed is not given back: against a hung server that
        # would double the time every call spends failing; if it did take a hold, the hold expires.
        holding: list[_Eval] = []
        spent = 0
        expiry = ""
        try:
            if r.session_key is not None:
                session = self._session_keys(r.session_key)[:3]
                admitted, reason, spent_raw, now, hold_expiry, before = yield _Eval(
                    SESSION_RESERVE,
                    session,
                    [
                        r.call_id, _bytes(r.session_id or ""), usd, r.estimate_tokens, int(r.count_call),
                        _cap_usd(caps.session_budget_usd), _cap(caps.session_max_llm_calls),
                        _cap(caps.session_max_tool_calls), _cap(caps.session_max_tokens),
                        hold_ttl_ms, r.session_ttl_seconds * 1000, int(caps.daily_budget_usd is not None), feature,
                    ],
                )  # fmt: skip
                now = self._observe(now)
                spent = int(spent_raw)
                if not admitted:
                    return Admission(False, _reason(reason), _usd(spent), caps.session_budget_usd)
                holding.append(_Eval(RELEASE, session, [r.call_id, str(now), before or b""]))
                day, check_day, expiry = now // DAY_MS, False, str(int(float(hold_expiry)))
            else:
                # No script has told the server's day yet: the window script checks the guess.
                day, check_day = self._guess_day(), True
            for feature_digest, cap, reason in windows:
                for _ in range(2):
                    window = self._window_keys(day, feature_digest)
                    status, value, now, hold_expiry = yield _Eval(
                        WINDOW_RESERVE,
                        window,
                        [r.call_id, usd, _cap_usd(cap), expiry, hold_ttl_ms, WINDOW_TTL_MS, day if check_day else ""],
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
                    return Admission(False, reason, _usd(int(value)), cap)
                holding.append(_Eval(RELEASE, window, [r.call_id, "", ""]))
                expiry = str(int(float(hold_expiry)))
            if r.session_key is None:
                daily = int(caps.daily_budget_usd is not None)
                yield _Eval(CALL_RESERVE, [self._call_key(r.call_id)], [usd, expiry, hold_ttl_ms, day, daily, feature])
        except FAILURES:
            yield from _give_back(holding)
            raise
        return Admission(True, spent_usd=_usd(spent), limit_usd=caps.session_budget_usd)

    def _settle(self, settlement: Settlement) -> _Steps[SettleResult]:
        s = settlement
        cost: str | int = "" if s.cost_usd is None else _pico(s.cost_usd)
        estimate = _pico(s.estimate_usd)
        ttl_ms = s.session_ttl_seconds * 1000
        if s.session_key is not None:
            tokens = [item for kind, count in s.tokens.items() for item in (kind, count)]
            digests = [signature_digest(signature) for signature in s.tool_signatures]
            already, charged, spent, repeats, warning, blocked, now, hold_day, hold_daily, hold_feature = yield _Eval(
                SESSION_SETTLE,
                self._session_keys(s.session_key),
                [
                    s.call_id, _bytes(s.session_id or ""), cost, estimate, int(s.count_call), ttl_ms,
                    s.loop_history, s.loop_repeat_threshold, s.loop_warn_threshold, len(s.tokens), *tokens, *digests,
                ],
            )  # fmt: skip
            result = SettleResult(
                charged_usd=_usd(int(charged)),
                session_spent_usd=_usd(int(spent)),
                loop_repeats=int(repeats),
                loop_warning=bool(warning),
                blocked_reason=_reason(blocked),
            )
        else:
            already, charged, now, hold_day, hold_daily, hold_feature = yield _Eval(
                CALL_SETTLE, [self._call_key(s.call_id)], [cost, estimate, ttl_ms]
            )
            result = SettleResult(charged_usd=_usd(int(charged)))
        if already:
            return SettleResult(charged_usd=0.0, already_settled=True)
        now = self._observe(now)
        day, feature, held_day, held_feature = now // DAY_MS, _digest(s.feature), int(hold_day), _text(hold_feature)
        ops: list[_Eval | _Command] = []
        # A hold taken on another day, or for another feature, is given back where it was taken.
        if held_feature and (held_feature != feature or held_day != day):
            ops.append(_Eval(RELEASE, self._window_keys(held_day, held_feature), [s.call_id, "", ""]))
        if _text(hold_daily) == "1" and held_day != day:
            ops.append(_Eval(RELEASE, self._window_keys(held_day, None), [s.call_id, "", ""]))
        for window in (self._window_keys(day, feature), self._window_keys(day, None)):
            ops.append(_Eval(WINDOW_SETTLE, window, [s.call_id, int(charged), WINDOW_TTL_MS]))
        if s.session_key is not None:
            # Indexes for `top` and `active`, not the source of truth: they may lag, never decide a charge.
            member = _scope_tag(s.session_key)
            index_ttl = max(ttl_ms, self._session_ttl_ms)
            ops += [
                _Command(("ZADD", self._spend_index, "GT", result.session_spent_usd, member)),
                _Command(("ZADD", self._active_index, "GT", now, member)),
                _Command(("PEXPIRE", self._spend_index, index_ttl)),
                _Command(("PEXPIRE", self._active_index, index_ttl)),
            ]
        yield ops
        return result

    def _get(self, session_key: str) -> _Steps[SessionState | None]:
        raw = yield _Eval(SESSION_GET, self._session_keys(session_key)[:3], [])
        return _state(raw) if raw else None

    def _end(self, session_key: str) -> _Steps[SessionState | None]:
        state, holds, expiries, _, hist = self._session_keys(session_key)
        raw = yield _Eval(SESSION_END, [state, holds, expiries, hist], [])
        member = _scope_tag(session_key)
        yield [_Command(("ZREM", self._spend_index, member)), _Command(("ZREM", self._active_index, member))]
        return _state(raw) if raw else None

    def _top(self, limit: int) -> _Steps[list[SessionState]]:
        found: list[SessionState] = []
        start = 0
        while len(found) < limit:
            members = yield _Command(("ZREVRANGE", self._spend_index, start, start + limit - 1))
            if not members:
                break
            raws = yield [_Eval(SESSION_GET, self._session_keys(_text(m))[:3], []) for m in members]
            stale = [member for member, raw in zip(members, raws, strict=True) if not raw]
            found += [_state(raw) for raw in raws if raw]
            start += len(members) - len(stale)
            if stale:  # sessions that expired since their last settle
                yield _Command(("ZREM", self._spend_index, *stale))
        found.sort(key=lambda state: state.spent_usd, reverse=True)
        return found[: max(limit, 0)]

    def _active(self, within_seconds: int) -> _Steps[int]:
        keep_ms = max(self._session_ttl_ms, within_seconds * 1000)
        count = yield _Eval(ACTIVE, [self._active_index], [within_seconds * 1000, keep_ms])
        return int(count)

    # -- keys --

    def _session_keys(self, session_key: str) -> list[str]:
        """state, holds, expiries, settled, hist."""
        base = f"{self._prefix}:{{{_scope_tag(session_key)}}}:"
        return [base + name for name in ("state", "holds", "expiries", "settled", "hist")]

    def _window_keys(self, day: int, feature_digest: str | None) -> list[str]:
        iso = (date(1970, 1, 1) + timedelta(days=day)).isoformat()
        tag = f"d:{iso}" if feature_digest is None else f"f:{iso}:{feature_digest}"
        return [f"{self._prefix}:{{{tag}}}:{name}" for name in ("state", "holds", "expiries")]

    def _call_key(self, call_id: str) -> str:
        return f"{self._prefix}:{{c:{_scope_tag(call_id)}}}:hold"

    # -- server time --

    def _observe(self, now_ms: int) -> int:
        self._clock_offset_ms = now_ms - _wall_clock() * 1000
        return int(now_ms)

    def _guess_day(self) -> int:
        return int((_wall_clock() * 1000 + self._clock_offset_ms) // DAY_MS)

    # -- clients and drivers --

    async def _run(self, steps: _Steps[T]) -> T:
        try:
            client = await self._async_client()
            operation = next(steps)
            while True:
                try:
                    reply = await _execute(client, operation)
                except FAILURES as exc:
                    operation = steps.throw(exc)
                else:
                    operation = steps.send(reply)
        except StopIteration as stop:
            return cast(T, stop.value)
        finally:
            steps.close()

    def _run_sync(self, steps: _Steps[T]) -> T:
        try:
            client = self._sync_client()
            operation = next(steps)
            while True:
                try:
                    reply = _execute_sync(client, operation)
                except FAILURES as exc:
                    operation = steps.throw(exc)
                else:
                    operation = steps.send(reply)
        except StopIteration as stop:
            return cast(T, stop.value)
        finally:
            steps.close()

    async def _async_client(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is None:
            entry = self._loops[loop] = _LoopClient(self._new_async_client(), ready=not self._cluster)
        if not entry.ready:
            # Concurrent first use of a cluster client would run discovery twice and race (redis-py #3935).
            async with entry.lock:
                if not entry.ready:
                    await entry.client.initialize()
                    entry.ready = True
        return entry.client

    def _sync_client(self) -> Any:
        with self._sync_lock:
            if self._sync is None:
                self._sync = self._new_sync_client()
            return self._sync

    def _new_async_client(self) -> Any:
        # No client-side retries: a charge resent after a timeout may already have been applied, and a fast failure
        # reaches the failover policy sooner than a slow success.
        options = self._options(AsyncRetry(NoBackoff(), 0))
        if self._cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(
                self._url, max_connections=CLUSTER_CONNECTIONS, **options
            )
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self._url, max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT_SECONDS, **options
        )
        return redis.asyncio.Redis.from_pool(pool)

    def _new_sync_client(self) -> Any:
        options = self._options(Retry(NoBackoff(), 0))
        if self._cluster:
            return redis.cluster.RedisCluster.from_url(self._url, max_connections=CLUSTER_CONNECTIONS, **options)
        pool = redis.BlockingConnectionPool.from_url(
            self._url, max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT_SECONDS, **options
        )
        return redis.Redis.from_pool(pool)

    def _options(self, retry: object) -> dict[str, Any]:
        return {"socket_timeout": self._timeout, "socket_connect_timeout": self._connect_timeout, "retry": retry}


async def _execute(client: Any, operation: _Op) -> Any:
    if isinstance(operation, list):
        async with client.pipeline(transaction=False) as pipe:
            for one in operation:
                _queue(pipe, one)
            replies = await pipe.execute(raise_on_error=False)
        return [await _again(client, one, reply) if isinstance(reply, Exception) else reply
                for one, reply in zip(operation, replies, strict=True)]  # fmt: skip
    if isinstance(operation, _Command):
        return await client.execute_command(*operation.args)
    script, keys = operation.script, operation.keys
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *operation.args)
    except NoScriptError:  # a restarted or failed-over server, or SCRIPT FLUSH
        await client.script_load(script.source)
        return await client.evalsha(script.sha, len(keys), *keys, *operation.args)


async def _again(client: Any, operation: _Eval | _Command, error: Exception) -> Any:
    if isinstance(error, NoScriptError):  # the script did not run: load it and run it alone
        return await _execute(client, operation)
    raise error


def _execute_sync(client: Any, operation: _Op) -> Any:
    if isinstance(operation, list):
        with client.pipeline(transaction=False) as pipe:
            for one in operation:
                _queue(pipe, one)
            replies = pipe.execute(raise_on_error=False)
        return [_again_sync(client, one, reply) if isinstance(reply, Exception) else reply
                for one, reply in zip(operation, replies, strict=True)]  # fmt: skip
    if isinstance(operation, _Command):
        return client.execute_command(*operation.args)
    script, keys = operation.script, operation.keys
    try:
        return client.evalsha(script.sha, len(keys), *keys, *operation.args)
    except NoScriptError:
        client.script_load(script.source)
        return client.evalsha(script.sha, len(keys), *keys, *operation.args)


def _again_sync(client: Any, operation: _Eval | _Command, error: Exception) -> Any:
    if isinstance(error, NoScriptError):
        return _execute_sync(client, operation)
    raise error


def _queue(pipe: Any, operation: _Eval | _Command) -> None:
    if isinstance(operation, _Command):
        pipe.execute_command(*operation.args)
    else:
        pipe.evalsha(operation.script.sha, len(operation.keys), *operation.keys, *operation.args)


def _give_back(holding: list[_Eval]) -> Generator[_Op, Any, None]:
    for release in reversed(holding):
        with contextlib.suppress(*FAILURES):  # if it fails, the hold expires on its own
            yield release
    holding.clear()


def _scope_tag(key: str) -> str:
    """Keys come encoded by `store.keys.session_key`; anything else is encoded here, so no key escapes its tag."""
    return key if _ENCODED.fullmatch(key) else encode_session_id(key)


def _digest(feature: str) -> str:
    return hashlib.sha256(feature.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _pico(usd: float) -> int:
    return round(usd * PICO)


def _usd(pico: int) -> float:
    return pico / PICO


def _cap_usd(usd: float | None) -> str:
    return "" if usd is None or usd == math.inf else str(_pico(usd))


def _cap(value: int | None) -> str:
    return "" if value is None else str(value)


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value or ""


def _reason(value: bytes | str | None) -> BlockReason | None:
    return cast(BlockReason, _text(value)) if value else None


def _state(raw: list[bytes]) -> SessionState:
    fields = {_text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}
    last_activity = fields.get("last_activity")
    return SessionState(
        session_id=_text(fields.get("id")),
        spent_usd=_usd(int(fields.get("spent", 0))),
        held_usd=_usd(int(fields.get("held", 0))),
        tokens={name[4:]: int(value) for name, value in fields.items() if name.startswith("tok:")},
        llm_calls=int(fields.get("llm_calls", 0)),
        tool_calls=int(fields.get("tool_calls", 0)),
        blocked_reason=_text(fields["blocked"]) if "blocked" in fields else None,
        last_activity=int(last_activity) / 1000 if last_activity else None,
    )
