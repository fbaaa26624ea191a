"""What only the Redis store has: its key layout, TTLs, scripts, clock, amounts and clients."""

from __future__ import annotations

import asyncio
import math
import random
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

import llmguard.store.redis as redis_store_module
from llmguard.settings import GuardSettings
from llmguard.store.base import Caps
from llmguard.store.keys import session_key
from llmguard.store.redis import PICO, SESSION_RESERVE, RedisStore
from tests.servers import redis_binaries
from tests.store.conftest import redis_settings
from tests.store.helpers import reservation, settlement
from tests.store.test_behaviour import HOSTILE_IDS

KEY = re.compile(r"(?P<prefix>[^{}]+):\{(?P<tag>[^{}]+)\}:(?P<name>state|holds|expiries|settled|hist|hold)")


def scan(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(key.decode() for key in client.scan_iter(match=f"{prefix}:*", count=1000))


def server_day(client: redis.Redis) -> str:
    seconds, _ = client.time()
    return datetime.fromtimestamp(seconds, UTC).date().isoformat()


async def test_every_key_has_its_scope_hash_tag_and_a_ttl(prefix: str, redis_client: redis.Redis) -> None:
    store = RedisStore(redis_settings(prefix))
    caps = Caps(session_budget_usd=100.0, feature_daily_budget_usd=100.0, daily_budget_usd=100.0)
    try:
        for i, session in enumerate(HOSTILE_IDS):
            await store.reserve(reservation(f"held-{i}", session, caps=caps))  # left in flight: holds stay
            await store.reserve(reservation(f"c{i}", session, caps=caps, feature="feature {with} braces"))
            await store.settle(settlement(f"c{i}", session, tools=["t()"], feature="feature {with} braces"))
        await store.reserve(reservation("loose", None, caps=caps))
        await store.settle(settlement("loose", None))
        denied = await store.reserve(reservation("denied", "poor", usd=1.0, caps=Caps(daily_budget_usd=1.0)))
        assert not denied.allowed
    finally:
        await store.aclose()

    keys = scan(redis_client, prefix)
    day = server_day(redis_client)
    tags = {session_key(session) for session in HOSTILE_IDS} | {"poor", "c:loose", f"d:{day}"}
    by_tag: dict[str, set[str]] = {}
    for key in keys:
        assert redis_client.pttl(key) > 0, key
        assert len(key) < 200, key  # a 10 kB id does not make a 10 kB key
        if key in (f"{prefix}:sessions:spend", f"{prefix}:sessions:active"):
            continue
        match = KEY.fullmatch(key)
        assert match is not None, key
        assert match["prefix"] == prefix
        tag = match["tag"]
        assert tag in tags or tag.startswith(f"f:{day}:"), key
        by_tag.setdefault(tag, set()).add(key)
    for session in HOSTILE_IDS:
        names = {KEY.fullmatch(key)["name"] for key in by_tag[session_key(session)]}  # type: ignore[index]
        assert names == {"state", "holds", "expiries", "settled", "hist"}
    for group in by_tag.values():
        assert len({key_slot(key.encode()) for key in group}) == 1
    # The denied reservation held nothing anywhere: its session's hold was given back.
    poor = redis_client.hgetall(f"{prefix}:{{poor}}:state")
    assert poor[b"held"] == b"0"
    assert not redis_client.exists(f"{prefix}:{{poor}}:holds")


async def test_scripts_are_loaded_again_after_script_flush(prefix: str, redis_client: redis.Redis) -> None:
    store = RedisStore(redis_settings(prefix))
    try:
        assert (await store.reserve(reservation("c1"))).allowed
        assert store.reserve_sync(reservation("c2")).allowed
        redis_client.script_flush()
        assert redis_client.script_exists(SESSION_RESERVE.sha) == [False]
        assert (await store.reserve(reservation("c3"))).allowed
        redis_client.script_flush()
        assert store.reserve_sync(reservation("c4")).allowed
        assert redis_client.script_exists(SESSION_RESERVE.sha) == [True]
        await store.settle(settlement("c1"))
        state = await store.get_session(session_key("s"))
        assert state is not None and state.llm_calls == 1
    finally:
        await store.aclose()


async def test_time_is_the_servers(prefix: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store_module, "_wall_clock", lambda: 0.0)  # this host believes it is 1970
    store = RedisStore(redis_settings(prefix))
    try:
        # Outside a session, the first script to run checks the day the client guessed.
        assert (await store.reserve(reservation("c1", None, caps=Caps(daily_budget_usd=1.0)))).allowed
        await store.reserve(reservation("c2", "s"))
    finally:
        await store.aclose()
    day = server_day(redis_client)
    keys = scan(redis_client, prefix)
    assert f"{prefix}:{{d:{day}}}:state" in keys
    assert not any("1970-01-01" in key for key in keys)
    last_activity = int(redis_client.hget(f"{prefix}:{{s}}:state", "last_activity") or 0) / 1000
    assert abs(last_activity - float(redis_client.time()[0])) < 60


async def test_amounts_stay_exact_over_a_thousand_odd_settles(prefix: str, redis_client: redis.Redis) -> None:
    rng = random.Random(1204)
    costs = [rng.uniform(1e-7, 1e-2) for _ in range(1000)]
    store = RedisStore(redis_settings(prefix))
    try:
        for start in range(0, len(costs), 100):
            await asyncio.gather(*(store.settle(settlement(f"c{i}", cost=costs[i])) for i in range(start, start + 100)))
        state = await store.get_session(session_key("s"))
    finally:
        await store.aclose()
    assert state is not None
    assert abs(state.spent_usd - math.fsum(costs)) <= 1e-9
    raw = redis_client.hget(f"{prefix}:{{s}}:state", "spent")
    assert raw is not None and raw.isdigit()  # an integer count of pico-dollars
    day = redis_client.hget(f"{prefix}:{{d:{server_day(redis_client)}}}:state", "spent")
    assert day is not None and abs(int(day) / PICO - math.fsum(costs)) <= 1e-9


async def test_a_resent_reservation_holds_once(prefix: str) -> None:
    store = RedisStore(redis_settings(prefix))
    caps = Caps(daily_budget_usd=10.0)
    try:
        assert (await store.reserve(reservation("c1", usd=0.25, caps=caps))).allowed
        assert (await store.reserve(reservation("c1", usd=0.25, caps=caps))).allowed
        state = await store.get_session(session_key("s"))
    finally:
        await store.aclose()
    assert state is not None and state.held_usd == 0.25


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.02)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0", accepted
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


async def test_a_silent_server_fails_fast_without_retries(silent_server: tuple[str, list[socket.socket]]) -> None:
    url, accepted = silent_server
    store = RedisStore(GuardSettings(redis_url=url))  # the default 50 ms timeout
    try:
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            await store.reserve(reservation("c1"))
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            store.settle_sync(settlement("c1"))
        assert time.monotonic() - started < 0.5
    finally:
        await store.aclose()
    assert len(accepted) == 2  # one connection each, never a retry


@pytest.fixture
def unix_socket_url(tmp_path: Path) -> Iterator[str]:
    server, _ = redis_binaries()
    path = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not open its socket")
            time.sleep(0.02)
        yield f"unix://{path}"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_unix_socket_urls(unix_socket_url: str) -> None:
    store = RedisStore(GuardSettings(redis_url=unix_socket_url, redis_timeout_seconds=2.0))
    try:
        assert (await store.reserve(reservation("c1"))).allowed
        store.settle_sync(settlement("c1", cost=0.25))
        state = await store.get_session(session_key("s"))
    finally:
        await store.aclose()
    assert state is not None and state.spent_usd == 0.25


def test_one_client_per_event_loop(prefix: str) -> None:
    store = RedisStore(redis_settings(prefix))

    async def use(call_id: str) -> bool:
        try:
            return (await store.reserve(reservation(call_id))).allowed
        finally:
            await store.aclose()

    assert asyncio.run(use("c1"))
    assert asyncio.run(use("c2"))  # a new loop: a new client, never a connection of the closed loop

    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(use("c3"))))
    thread.start()
    thread.join()
    assert results == [True]
    state = store.get_session_sync(session_key("s"))
    store.close()
    assert state is not None and state.held_usd == 0.375


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        RedisStore(GuardSettings())
    with pytest.raises(ValueError, match="prefix"):
        RedisStore(GuardSettings(redis_url="redis://127.0.0.1:6379/0", redis_prefix="app{1}"))


async def test_a_resent_reservation_after_the_session_ended_still_expires(
    prefix: str, redis_client: redis.Redis
) -> None:
    store = RedisStore(redis_settings(prefix))
    try:
        await store.reserve(reservation("again", "gone"))
        await store.end_session(session_key("gone"))
        assert (await store.reserve(reservation("again", "gone"))).allowed  # the same call id, resent
    finally:
        await store.aclose()
    ttls = {key: redis_client.pttl(key) for key in scan(redis_client, prefix)}
    assert ttls and all(ttl > 0 for ttl in ttls.values()), ttls


def index_members(client: redis.Redis, prefix: str) -> tuple[set[str], set[str]]:
    spend = {member.decode() for member in client.zrange(f"{prefix}:sessions:spend", 0, -1)}
    active = {member.decode() for member in client.zrange(f"{prefix}:sessions:active", 0, -1)}
    return spend, active


async def test_an_expired_session_leaves_both_indexes(prefix: str, redis_client: redis.Redis) -> None:
    store = RedisStore(redis_settings(prefix, session_ttl_seconds=1))
    try:
        await store.settle(settlement("c1", "gone", session_ttl=1))
        # Last active as long ago, but its state lives on (a longer TTL here; an in-flight call's in practice).
        await store.settle(settlement("c2", "kept", session_ttl=3600))
        assert index_members(redis_client, prefix) == ({"gone", "kept"}, {"gone", "kept"})
        await asyncio.sleep(1.1)
        await store.settle(settlement("c3", "fresh", session_ttl=3600))
        assert not redis_client.exists(f"{prefix}:{{gone}}:state")
        assert await store.active_sessions(1) == 1
        assert index_members(redis_client, prefix) == ({"kept", "fresh"}, {"kept", "fresh"})
        # The sync twin does the same upkeep.
        await store.settle(settlement("c4", "later", session_ttl=1))
        await store.settle(settlement("c5", "fresh"))
        await asyncio.sleep(1.1)
        assert store.active_sessions_sync(1) == 0
        assert index_members(redis_client, prefix) == ({"kept", "fresh"}, {"kept", "fresh"})
    finally:
        await store.aclose()


async def test_a_session_active_again_is_not_trimmed(prefix: str, redis_client: redis.Redis) -> None:
    store = RedisStore(redis_settings(prefix, session_ttl_seconds=1))
    try:
        await store.settle(settlement("c1", "back", session_ttl=1))
        await asyncio.sleep(1.1)
        # Its state expired, and it comes back before anything trims the indexes: a settle re-adds it to both.
        await store.settle(settlement("c2", "back", session_ttl=3600))
        assert await store.active_sessions(1) == 1
        assert index_members(redis_client, prefix) == ({"back"}, {"back"})
    finally:
        await store.aclose()


async def test_ending_a_session_takes_it_out_of_both_indexes(prefix: str, redis_client: redis.Redis) -> None:
    store = RedisStore(redis_settings(prefix))
    try:
        for session in ("a", "b", "c"):
            await store.reserve(reservation(f"c-{session}", session))
            await store.settle(settlement(f"c-{session}", session))
        assert index_members(redis_client, prefix) == ({"a", "b", "c"}, {"a", "b", "c"})
        assert await store.end_session(session_key("a")) is not None
        assert store.end_session_sync(session_key("b")) is not None
        assert index_members(redis_client, prefix) == ({"c"}, {"c"})
        # A session that never settled is in no index, and ending it touches nothing else.
        await store.reserve(reservation("c-d", "d"))
        assert await store.end_session(session_key("d")) is not None
        assert index_members(redis_client, prefix) == ({"c"}, {"c"})
    finally:
        await store.aclose()


async def test_a_denial_leaves_no_block_on_the_session(prefix: str, redis_client: redis.Redis) -> None:
    store = RedisStore(redis_settings(prefix))
    try:
        denied = await store.reserve(reservation("c1", "new", usd=2.0, caps=Caps(session_budget_usd=1.0)))
        assert (denied.allowed, denied.reason) == (False, "session_budget")
    finally:
        await store.aclose()
    state = f"{prefix}:{{new}}:state"
    assert redis_client.hgetall(state) == {b"id": b"new"}  # nothing but the new session's id ...
    assert 0 < redis_client.pttl(state) <= 3_600_000  # ... and its TTL
