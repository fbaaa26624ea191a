"""One behaviour for every store: the memory store and the Redis store (standalone and Cluster), through the async
API and through its sync twin, answer these the same way."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest

from llmguard.policy import loop_repeats, signature_digest
from llmguard.store.base import Caps
from tests.store.helpers import Api, reservation, settlement

HAIR = 1e-9


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-9)


async def test_reserve_holds_and_settle_replaces_the_hold_by_the_cost(api: Api) -> None:
    admission = await api.reserve(reservation("c1", usd=0.25, caps=Caps(session_budget_usd=1.0)))
    assert admission.allowed and admission.reason is None
    assert admission.limit_usd == 1.0
    held = await api.get("s")
    assert held is not None
    assert held.session_id == "s"
    assert held.held_usd == approx(0.25)
    assert held.spent_usd == 0.0
    assert held.llm_calls == 0

    result = await api.settle(settlement("c1", cost=0.125, tokens={"input": 300, "output": 40, "reasoning": 10}))
    assert result.charged_usd == approx(0.125)
    assert result.session_spent_usd == approx(0.125)
    assert not result.already_settled and result.blocked_reason is None

    state = await api.get("s")
    assert state is not None
    assert state.spent_usd == approx(0.125)
    assert state.held_usd == 0.0
    assert state.tokens == {"input": 300, "output": 40, "reasoning": 10}
    assert state.llm_calls == 1
    assert state.tool_calls == 0
    assert state.blocked_reason is None
    assert state.last_activity is not None

    admission = await api.reserve(reservation("c2", usd=0.5, caps=Caps(session_budget_usd=1.0)))
    assert admission.spent_usd == approx(0.125)


async def test_unknown_session_has_no_state(api: Api) -> None:
    assert await api.get("nobody") is None


async def test_session_budget_admits_at_the_boundary_and_denies_a_hair_more(api: Api) -> None:
    caps = Caps(session_budget_usd=1.0)
    assert (await api.reserve(reservation("c1", usd=0.5, caps=caps))).allowed
    await api.settle(settlement("c1", cost=0.25))
    # spent 0.25 + held 0 + 0.75 == 1.0: admitted.
    assert (await api.reserve(reservation("c2", usd=0.75, caps=caps))).allowed
    denied = await api.reserve(reservation("c3", usd=HAIR, caps=caps))
    assert not denied.allowed
    assert denied.reason == "session_budget"
    assert denied.spent_usd == approx(0.25)
    assert denied.limit_usd == 1.0


async def test_holds_count_against_the_budget(api: Api) -> None:
    caps = Caps(session_budget_usd=1.0)
    assert (await api.reserve(reservation("c1", usd=0.5, caps=caps))).allowed
    assert (await api.reserve(reservation("c2", usd=0.5, caps=caps))).allowed
    denied = await api.reserve(reservation("c3", usd=HAIR, caps=caps))
    assert (denied.allowed, denied.reason, denied.spent_usd) == (False, "session_budget", 0.0)


async def test_llm_call_cap_counts_held_calls_and_ignores_sdk_retries(api: Api) -> None:
    caps = Caps(session_max_llm_calls=2)
    assert (await api.reserve(reservation("c1", caps=caps))).allowed
    await api.settle(settlement("c1"))
    assert (await api.reserve(reservation("c2", caps=caps))).allowed  # 1 made + 1 held + this one > 2? no: == 2
    # A retry of a call already counted does not count again.
    assert (await api.reserve(reservation("c2-retry", caps=caps, count_call=False))).allowed
    denied = await api.reserve(reservation("c3", caps=caps))
    assert (denied.allowed, denied.reason) == (False, "session_llm_calls")


async def test_tool_call_cap_denies_once_exceeded(api: Api) -> None:
    caps = Caps(session_max_tool_calls=2)
    await api.settle(settlement("c1", tools=["read(a)", "read(b)"]))
    assert (await api.reserve(reservation("c2", caps=caps))).allowed  # 2 tool calls is not more than 2
    await api.settle(settlement("c2", tools=["read(c)"]))
    denied = await api.reserve(reservation("c3", caps=caps))
    assert (denied.allowed, denied.reason) == (False, "session_tool_calls")


async def test_token_cap_admits_at_the_boundary_and_leaves_reasoning_out(api: Api) -> None:
    caps = Caps(session_max_tokens=1000)
    await api.settle(settlement("c1", tokens={"input": 300, "output": 200, "reasoning": 999}))
    assert (await api.reserve(reservation("c2", tokens=500, caps=caps))).allowed
    denied = await api.reserve(reservation("c3", tokens=1, caps=caps))
    assert (denied.allowed, denied.reason) == (False, "session_tokens")


async def test_settle_is_idempotent_by_call_id(api: Api) -> None:
    await api.reserve(reservation("c1", usd=0.5))
    first = await api.settle(settlement("c1", cost=0.25, tools=["t(1)"]))
    again = await api.settle(settlement("c1", cost=0.25, tools=["t(1)"]))
    assert not first.already_settled
    assert again.already_settled and again.charged_usd == 0.0
    state = await api.get("s")
    assert state is not None
    assert (state.spent_usd, state.held_usd, state.llm_calls, state.tool_calls) == (approx(0.25), 0.0, 1, 1)


async def test_unknown_cost_charges_the_larger_of_estimate_and_hold(api: Api) -> None:
    await api.reserve(reservation("c1", usd=0.5))
    assert (await api.settle(settlement("c1", cost=None, estimate=0.25))).charged_usd == approx(0.5)
    await api.reserve(reservation("c2", usd=0.25))
    assert (await api.settle(settlement("c2", cost=None, estimate=0.75))).charged_usd == approx(0.75)
    # Never reserved: only the estimate is known.
    assert (await api.settle(settlement("c3", cost=None, estimate=0.125))).charged_usd == approx(0.125)
    state = await api.get("s")
    assert state is not None
    assert state.spent_usd == approx(1.375)


async def test_holds_and_sessions_expire(api: Api) -> None:
    caps = Caps(session_budget_usd=1.0, daily_budget_usd=1.0)
    assert (await api.reserve(reservation("c1", "a", usd=0.75, caps=caps, hold_ttl=1))).allowed
    denied = await api.reserve(reservation("c2", "b", usd=0.5, caps=Caps(daily_budget_usd=1.0)))
    assert (denied.allowed, denied.reason) == (False, "daily_budget")
    await api.reserve(reservation("c3", "short", session_ttl=1))
    await api.settle(settlement("c3", "short", session_ttl=1))

    await asyncio.sleep(1.1)

    a = await api.get("a")
    assert a is not None
    assert a.held_usd == 0.0  # no sweeper: reading the session gives the expired hold back
    # and the window's: 0.125 spent by "short" + 0.875 == 1.0
    assert (await api.reserve(reservation("c4", "a", usd=0.875, caps=caps))).allowed
    assert await api.get("short") is None


async def test_the_same_tool_call_again_and_again_blocks_the_session(api: Api) -> None:
    repeats = []
    for i in range(5):
        result = await api.settle(settlement(f"c{i}", tools=['search({"q": "x"})']))
        repeats.append(result.loop_repeats)
        assert result.blocked_reason == (None if i < 4 else "loop_detected")
    assert repeats == [1, 2, 3, 4, 5]
    state = await api.get("s")
    assert state is not None and state.blocked_reason == "loop_detected"
    denied = await api.reserve(reservation("c9"))
    assert (denied.allowed, denied.reason) == (False, "loop_detected")


async def test_an_a_b_cycle_blocks_the_session(api: Api) -> None:
    result = await api.settle(settlement("c1", tools=["a()", "b()"] * 4))
    assert (result.loop_repeats, result.blocked_reason) == (4, None)
    result = await api.settle(settlement("c2", tools=["a()", "b()"]))
    assert (result.loop_repeats, result.blocked_reason) == (5, "loop_detected")


async def test_varied_progress_is_not_a_loop(api: Api) -> None:
    for i in range(30):
        result = await api.settle(settlement(f"c{i}", tools=[f"read(page={i})", "summarise()"][: 1 + i % 2]))
        assert result.blocked_reason is None
        assert result.loop_repeats < 3


async def test_the_loop_warning_comes_once_per_session_before_the_block(api: Api) -> None:
    results = [await api.settle(settlement(f"c{i}", tools=["x()"], threshold=5, warn=3)) for i in range(5)]
    assert [result.loop_repeats for result in results] == [1, 2, 3, 4, 5]
    assert [result.loop_warning for result in results] == [False, False, True, False, False]
    assert [result.blocked_reason for result in results] == [None, None, None, None, "loop_detected"]
    # A warn threshold of 0 is off.
    quiet = [await api.settle(settlement(f"q{i}", "quiet", tools=["x()"], warn=0)) for i in range(3)]
    assert not any(result.loop_warning for result in quiet)


async def test_a_settle_without_tool_calls_reports_no_repeats(api: Api) -> None:
    await api.settle(settlement("c1", tools=["x()"] * 4))
    assert (await api.settle(settlement("c2"))).loop_repeats == 0


async def test_loop_repeats_follow_the_policy_rule(api: Api) -> None:
    rng = random.Random(20261204)
    for case in range(40):
        calls = [rng.choice("ABC") for _ in range(rng.randint(1, 30))]
        history = 12
        result = await api.settle(settlement(f"c{case}", f"loop-{case}", tools=calls, threshold=99, history=history))
        expected = loop_repeats([signature_digest(call) for call in calls][-history:])
        assert result.loop_repeats == expected, calls


async def test_a_denied_reservation_is_for_that_call_only(api: Api) -> None:
    caps = Caps(session_budget_usd=1.0, session_max_llm_calls=3, session_max_tokens=1000)
    denied = await api.reserve(reservation("c1", usd=2.0, caps=caps))
    assert (denied.allowed, denied.reason) == (False, "session_budget")
    state = await api.get("s")
    assert state is not None and state.blocked_reason is None and state.held_usd == 0.0
    # spent + held + estimate <= cap, per call: a smaller call that fits is admitted.
    assert (await api.reserve(reservation("c2", usd=0.75, caps=caps))).allowed
    denied = await api.reserve(reservation("c3", usd=0.5, caps=caps))
    assert (denied.allowed, denied.reason) == (False, "session_budget")
    assert (await api.reserve(reservation("c4", usd=0.25, caps=caps))).allowed  # 0.75 + 0.25 == 1.0
    denied = await api.reserve(reservation("c5", usd=0.0, tokens=801, caps=caps))
    assert (denied.allowed, denied.reason) == (False, "session_tokens")
    assert (await api.reserve(reservation("c6", usd=0.0, tokens=800, caps=caps))).allowed
    denied = await api.reserve(reservation("c7", usd=0.0, tokens=0, caps=caps))
    assert (denied.allowed, denied.reason) == (False, "session_llm_calls")
    # An SDK retry is not a new call: it still fits.
    assert (await api.reserve(reservation("c8", usd=0.0, tokens=0, caps=caps, count_call=False))).allowed
    state = await api.get("s")
    assert state is not None and state.blocked_reason is None
    assert (state.held_usd, state.llm_calls) == (approx(1.0), 0)

    await api.settle(settlement("c2", cost=0.5))
    await api.settle(settlement("c4", cost=0.125))
    # With room again (0.625 spent, nothing held), a call the budget denied before is admitted.
    assert (await api.reserve(reservation("c9", usd=0.375, caps=Caps(session_budget_usd=1.0)))).allowed
    state = await api.get("s")
    assert state is not None and state.blocked_reason is None


async def test_a_tool_call_denial_is_for_that_call_only(api: Api) -> None:
    await api.settle(settlement("c1", tools=["read(a)", "read(b)", "read(c)"]))
    denied = await api.reserve(reservation("c2", caps=Caps(session_max_tool_calls=2)))
    assert (denied.allowed, denied.reason) == (False, "session_tool_calls")
    state = await api.get("s")
    assert state is not None and state.blocked_reason is None
    assert (await api.reserve(reservation("c3", caps=Caps(session_max_tool_calls=3)))).allowed


async def test_a_loop_blocks_every_later_reservation(api: Api) -> None:
    caps = Caps(session_budget_usd=100.0)
    assert (await api.reserve(reservation("c0", usd=0.5, caps=caps))).allowed
    for i in range(5):
        result = await api.settle(settlement(f"c{i}", tools=["x()"]))
    assert result.blocked_reason == "loop_detected"
    for i, (usd, tokens, count_call) in enumerate([(0.0, 0, True), (1e-9, 1, False), (0.5, 100, True)]):
        denied = await api.reserve(reservation(f"after-{i}", usd=usd, tokens=tokens, caps=caps, count_call=count_call))
        assert (denied.allowed, denied.reason) == (False, "loop_detected")
        # A budget denial does not replace the loop block.
        denied = await api.reserve(reservation(f"over-{i}", usd=1000.0, caps=caps))
        assert (denied.allowed, denied.reason) == (False, "loop_detected")
    state = await api.get("s")
    assert state is not None and state.blocked_reason == "loop_detected"


async def test_feature_daily_budget(api: Api) -> None:
    caps = Caps(feature_daily_budget_usd=1.0)
    assert (await api.reserve(reservation("c1", "x", usd=0.75, caps=caps, feature="search"))).allowed
    denied = await api.reserve(reservation("c2", "y", usd=0.5, caps=caps, feature="search"))
    assert (denied.allowed, denied.reason, denied.spent_usd, denied.limit_usd) == (
        False, "feature_daily_budget", 0.0, 1.0,
    )  # fmt: skip
    assert (await api.reserve(reservation("c3", "y", usd=0.5, caps=caps, feature="chat"))).allowed
    y = await api.get("y")
    assert y is not None
    # A window's denial neither blocks the session nor leaves the session's hold behind.
    assert y.blocked_reason is None and y.held_usd == approx(0.5)

    await api.settle(settlement("c1", "x", cost=0.25, feature="search"))
    assert (await api.reserve(reservation("c4", "y", usd=0.75, caps=caps, feature="search"))).allowed
    denied = await api.reserve(reservation("c5", "y", usd=HAIR, caps=caps, feature="search"))
    assert (denied.allowed, denied.reason, denied.spent_usd) == (False, "feature_daily_budget", approx(0.25))


async def test_daily_budget_spans_features_and_calls_outside_sessions(api: Api) -> None:
    caps = Caps(daily_budget_usd=1.0)
    assert (await api.reserve(reservation("c1", None, usd=0.5, caps=caps, feature="a"))).allowed
    assert (await api.reserve(reservation("c2", "s", usd=0.5, caps=caps, feature="b"))).allowed
    denied = await api.reserve(reservation("c3", "t", usd=HAIR, caps=caps, feature="c"))
    assert (denied.allowed, denied.reason, denied.limit_usd) == (False, "daily_budget", 1.0)

    result = await api.settle(settlement("c1", None, cost=0.125, feature="a"))
    assert (result.charged_usd, result.already_settled) == (approx(0.125), False)
    assert (await api.reserve(reservation("c4", "t", usd=0.375, caps=caps))).allowed  # 0.125 + 0.5 + 0.375
    denied = await api.reserve(reservation("c5", "t", usd=HAIR, caps=caps))
    assert (denied.allowed, denied.spent_usd) == (False, approx(0.125))


async def test_calls_outside_sessions_settle_once_at_the_larger_of_estimate_and_hold(api: Api) -> None:
    await api.reserve(reservation("c1", None, usd=0.5))
    assert (await api.settle(settlement("c1", None, cost=None, estimate=0.25))).charged_usd == approx(0.5)
    assert (await api.settle(settlement("c1", None, cost=None, estimate=0.25))).already_settled
    assert (await api.settle(settlement("c2", None, cost=None, estimate=0.25))).charged_usd == approx(0.25)


HOSTILE_IDS = [
    "a",
    "~" + hashlib.sha256(b"a").hexdigest(),
    "x" * 10_000,
    "line\nbreak\x00nul\x1b[31m",
    "{a}",
    "}{",
    "{",
    "a:b:{c}",
    "ünïcødé ☃ 会话",
    "sha256:" + "0" * 64,
]


async def test_hostile_session_ids_stay_apart(api: Api) -> None:
    for i, session in enumerate(HOSTILE_IDS):
        assert (await api.reserve(reservation(f"c{i}", session, caps=Caps(session_budget_usd=100.0)))).allowed
        await api.settle(settlement(f"c{i}", session, cost=0.125 * (i + 1)))
    for i, session in enumerate(HOSTILE_IDS):
        state = await api.get(session)
        assert state is not None
        assert state.session_id == session
        assert state.spent_usd == approx(0.125 * (i + 1))
        assert state.llm_calls == 1


async def test_end_session_returns_the_last_state_and_forgets_it(api: Api) -> None:
    await api.reserve(reservation("c1"))
    await api.settle(settlement("c1", cost=0.25, tools=["t()"]))
    ended = await api.end("s")
    assert ended is not None
    assert (ended.session_id, ended.spent_usd, ended.llm_calls, ended.tool_calls) == ("s", approx(0.25), 1, 1)
    assert await api.get("s") is None
    assert await api.end("s") is None
    assert await api.top(10) == []
    assert await api.active(3600) == 0
    # A settle that arrives late is still settled once.
    assert (await api.settle(settlement("c1", cost=0.25))).already_settled


async def test_top_sessions_by_spend(api: Api) -> None:
    for session, cost in [("small", 0.125), ("big", 0.5), ("middle", 0.25)]:
        await api.settle(settlement(f"c-{session}", session, cost=cost))
    assert [state.session_id for state in await api.top(2)] == ["big", "middle"]
    top = await api.top(10)
    assert [(state.session_id, state.spent_usd) for state in top] == [
        ("big", approx(0.5)), ("middle", approx(0.25)), ("small", approx(0.125)),
    ]  # fmt: skip
    assert await api.top(0) == []


async def test_active_sessions(api: Api) -> None:
    assert await api.active(60) == 0
    for session in ("a", "b", "c"):
        await api.reserve(reservation(f"c-{session}", session))
        await api.settle(settlement(f"c-{session}", session))
    assert await api.active(60) == 3
    await api.end("b")
    assert await api.active(60) == 2


async def test_concurrent_reservations_admit_exactly_what_fits(api: Api) -> None:
    caps = Caps(session_budget_usd=1.25)
    admissions = await api.reserve_many([reservation(f"c{i}", usd=0.125, caps=caps) for i in range(50)])
    assert sum(admission.allowed for admission in admissions) == 10
    state = await api.get("s")
    assert state is not None and state.held_usd == approx(1.25)


async def test_concurrent_reservations_across_sessions_fill_the_daily_budget_exactly(api: Api) -> None:
    caps = Caps(session_budget_usd=1.0, daily_budget_usd=1.25)
    admissions = await api.reserve_many([reservation(f"c{i}", f"s{i}", usd=0.125, caps=caps) for i in range(50)])
    assert sum(admission.allowed for admission in admissions) == 10
    states = [await api.get(f"s{i}") for i in range(50)]
    # Every session whose reservation a window denied got its own hold back.
    assert sum(state.held_usd for state in states if state is not None) == approx(1.25)
    assert all(state is None or state.blocked_reason is None for state in states)


async def test_a_hold_is_given_back_where_it_was_taken(api: Api) -> None:
    caps = Caps(feature_daily_budget_usd=1.0)
    assert (await api.reserve(reservation("c1", usd=0.75, caps=caps, feature="plan"))).allowed
    await api.settle(settlement("c1", cost=0.125, feature="act"))  # settled under another feature
    assert (await api.reserve(reservation("c2", usd=1.0, caps=caps, feature="plan"))).allowed
    assert (await api.reserve(reservation("c3", usd=0.875, caps=caps, feature="act"))).allowed
    assert not (await api.reserve(reservation("c4", usd=HAIR, caps=caps, feature="act"))).allowed


async def test_a_call_in_flight_when_its_session_ends_still_settles_once(api: Api) -> None:
    caps = Caps(daily_budget_usd=1.0)
    assert (await api.reserve(reservation("c1", usd=0.75, caps=caps))).allowed
    ended = await api.end("s")
    assert ended is not None and ended.held_usd == approx(0.75)
    result = await api.settle(settlement("c1", cost=None, estimate=0.0))
    assert result.charged_usd == approx(0.75)  # the hold was still known
    assert (await api.settle(settlement("c1", cost=None))).already_settled
    state = await api.get("s")
    assert state is not None and (state.spent_usd, state.held_usd) == (approx(0.75), 0.0)
    assert (await api.reserve(reservation("c2", "t", usd=0.25, caps=caps))).allowed  # the day's hold was released
    assert not (await api.reserve(reservation("c3", "t", usd=HAIR, caps=caps))).allowed
