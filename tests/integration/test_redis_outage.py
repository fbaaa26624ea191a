"""Redis stopped mid-traffic: `open` keeps calls going, `closed` refuses them; restarted, totals resume exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry

from llmguard import Guard, GuardBlocked
from llmguard.store.keys import session_key
from llmguard.testing import RecordedRequest, SimulatedProvider
from tests.e2e.helpers import price, total
from tests.servers import RedisProcess

MESSAGES: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path)
    process.start()
    yield process
    process.stop()


def cost(requests: list[RecordedRequest]) -> float:
    result = 0.0
    for request in requests:
        assert request.usage is not None
        result += price("openai", request.model, input=request.usage["input"], output=request.usage["output"])
    return result


async def calls(guard: Guard, provider_url: str, session: str, count: int) -> None:
    async with (
        openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="t", http_client=guard.async_client()) as client,
        guard.session(session, feature="outage"),
    ):
        for _ in range(count):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)


async def test_fail_open_keeps_calls_going_and_resumes_totals(
    redis_process: RedisProcess, provider: SimulatedProvider, provider_url: str, registry: CollectorRegistry
) -> None:
    guard = Guard(registry=registry, redis_url=redis_process.url, store_failure="open", redis_timeout_seconds=0.5)
    async with guard:
        await calls(guard, provider_url, "steady", 3)
        redis_process.stop()
        await calls(guard, provider_url, "steady", 3)  # Redis is down: the calls still go through
        assert total(registry, "llmguard_store_errors_total", operation="reserve") == 3
        assert len(provider.requests) == 6
        redis_process.start()
        await calls(guard, provider_url, "steady", 2)
        state = await guard.get_session("steady")

    # Redis holds the calls made while it was up, each once; the outage's calls were kept by the fallback.
    assert state is not None and state.llm_calls == 5 and state.held_usd == 0
    up = provider.requests[:3] + provider.requests[6:]
    assert abs(state.spent_usd - cost(up)) <= 1e-9


async def test_fail_closed_refuses_calls_while_redis_is_down(
    redis_process: RedisProcess, provider: SimulatedProvider, provider_url: str, registry: CollectorRegistry
) -> None:
    guard = Guard(registry=registry, redis_url=redis_process.url, store_failure="closed", redis_timeout_seconds=0.5)
    async with guard:
        await calls(guard, provider_url, "strict", 2)
        redis_process.stop()
        with pytest.raises(GuardBlocked) as raised:
            await calls(guard, provider_url, "strict", 1)
        assert raised.value.reason == "store_unavailable"
        assert len(provider.requests) == 2
        redis_process.start()
        await calls(guard, provider_url, "strict", 1)
        state = await guard.get_session("strict")
    assert state is not None and state.llm_calls == 3
    assert abs(state.spent_usd - cost(provider.requests)) <= 1e-9


async def test_outage_under_concurrent_traffic_counts_every_call_exactly_once(
    redis_process: RedisProcess, provider: SimulatedProvider, provider_url: str, registry: CollectorRegistry
) -> None:
    """Redis goes down and comes back while calls are in flight: every call is accounted exactly once, either in
    Redis or in the process's fallback, and each store's spend is exactly its calls' cost."""
    guard = Guard(registry=registry, redis_url=redis_process.url, store_failure="open", redis_timeout_seconds=0.5)
    done = asyncio.Event()
    made = 0

    async def traffic() -> None:
        nonlocal made
        async with (
            openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="t", http_client=guard.async_client()) as client,
            guard.session("busy", feature="outage"),
        ):
            while not done.is_set():
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
                made += 1

    async with guard:
        workers = [asyncio.create_task(traffic()) for _ in range(4)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(redis_process.stop)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(redis_process.start)
        await asyncio.sleep(0.3)
        done.set()
        await asyncio.gather(*workers)  # every call succeeded: none raised
        in_redis = await guard.get_session("busy")
        in_fallback = guard.store.fallback.get_session_sync(session_key("busy"))

    assert in_redis is not None and in_fallback is not None
    assert in_redis.llm_calls + in_fallback.llm_calls == made == len(provider.requests)
    assert in_fallback.llm_calls > 0 and total(registry, "llmguard_store_errors_total") > 0
    one_call = cost(provider.requests[:1])  # identical requests: identical usage and cost
    assert abs(in_redis.spent_usd - in_redis.llm_calls * one_call) <= 1e-9
    assert abs(in_fallback.spent_usd - in_fallback.llm_calls * one_call) <= 1e-9
