"""What only the memory store has: its expiry heaps and how long it keeps what it keeps (on a clock of the test's)."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import pytest

import llmguard.store.memory as memory_module
from llmguard.store.base import Caps
from llmguard.store.keys import session_key
from llmguard.store.memory import MemoryStore
from tests.store.helpers import reservation, settlement

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    fake = SimpleNamespace(time=lambda: clock.now, strftime=time.strftime, gmtime=time.gmtime)
    monkeypatch.setattr(memory_module, "time", fake)
    return clock


def heap_sizes(store: MemoryStore) -> tuple[int, int, int, int]:
    return (
        len(store._hold_expiries),
        len(store._settled_expiries),
        len(store._session_expiries),
        len(store._window_expiries),
    )


def test_settled_markers_last_as_long_as_a_hold(clock: Clock) -> None:
    store = MemoryStore()
    settle = dataclasses.replace(settlement("c1"), hold_ttl_seconds=600, session_ttl_seconds=3600)
    assert not store.settle_sync(settle).already_settled
    clock.advance(599)
    assert store.settle_sync(settle).already_settled
    clock.advance(2)
    store.get_session_sync(session_key("s"))
    assert store._settled == {} and store._settled_expiries == []
    assert store.get_session_sync(session_key("s")) is not None  # the session itself lives on


def test_everything_expires_and_the_heaps_empty(clock: Clock) -> None:
    store = MemoryStore()
    caps = Caps(session_budget_usd=10.0, feature_daily_budget_usd=100.0, daily_budget_usd=100.0)
    for i in range(100):
        assert store.reserve_sync(reservation(f"held-{i}", f"s{i}", caps=caps, hold_ttl=60, session_ttl=600)).allowed
        store.reserve_sync(reservation(f"c{i}", f"s{i}", caps=caps, feature=f"f{i % 3}"))
        store.settle_sync(settlement(f"c{i}", f"s{i}", feature=f"f{i % 3}", session_ttl=600))
    assert len(store._sessions) == 100 and len(store._holds) == 100

    clock.advance(61)  # the holds left in flight expire and give back what they held
    states = [store.get_session_sync(session_key(f"s{i}")) for i in range(100)]
    assert all(state is not None and state.held_usd == 0.0 for state in states)
    assert store._holds == {}
    assert all(totals.held == 0.0 for totals in store._windows.values())

    clock.advance(600)  # sessions and settled markers
    assert store.top_sessions_sync(10) == []
    assert store._sessions == {} and store._settled == {}
    assert store._windows != {}
    clock.advance(2 * 86400)  # the windows
    store.active_sessions_sync(60)
    assert store._windows == {}
    assert heap_sizes(store) == (0, 0, 0, 0)


def test_a_session_in_use_keeps_one_heap_entry(clock: Clock) -> None:
    store = MemoryStore()
    caps = Caps(daily_budget_usd=1000.0)
    for i in range(1000):
        assert store.reserve_sync(reservation(f"c{i}", caps=caps, session_ttl=60)).allowed
        store.settle_sync(settlement(f"c{i}", session_ttl=60))
        clock.advance(1)
    holds, settled, sessions, windows = heap_sizes(store)
    assert (sessions, windows) == (1, 2)
    # Settled calls' holds and markers leave the heaps when they come due (hold TTL: 600 s), not before.
    assert store._holds == {} and holds == settled == len(store._settled) == 600
    state = store.get_session_sync(session_key("s"))
    assert state is not None and state.llm_calls == 1000


def test_a_shorter_ttl_from_a_later_call_applies(clock: Clock) -> None:
    store = MemoryStore()
    assert store.reserve_sync(reservation("c1", session_ttl=3600)).allowed
    store.settle_sync(settlement("c1", session_ttl=1))  # as PEXPIRE does on Redis
    clock.advance(1.5)
    assert store.get_session_sync(session_key("s")) is None


def test_a_session_ended_and_started_again_expires_on_its_new_schedule(clock: Clock) -> None:
    store = MemoryStore()
    store.settle_sync(settlement("c1", session_ttl=10))
    clock.advance(5)
    assert store.end_session_sync(session_key("s")) is not None
    store.settle_sync(settlement("c2", session_ttl=100))
    clock.advance(6)  # past the first session's expiry
    state = store.get_session_sync(session_key("s"))
    assert state is not None and state.llm_calls == 1
    clock.advance(95)
    assert store.get_session_sync(session_key("s")) is None
    assert store._session_expiries == []


def test_window_keys_do_not_hold_the_feature_name(clock: Clock) -> None:
    store = MemoryStore()
    feature = "f" * 10_000
    caps = Caps(feature_daily_budget_usd=1.0)
    assert store.reserve_sync(reservation("c1", usd=0.75, caps=caps, feature=feature)).allowed
    store.settle_sync(settlement("c1", cost=0.5, feature=feature))
    assert all(len(key) < 64 for key in store._windows)
    denied = store.reserve_sync(reservation("c2", usd=0.75, caps=caps, feature=feature))
    assert (denied.allowed, denied.reason, denied.spent_usd) == (False, "feature_daily_budget", 0.5)
