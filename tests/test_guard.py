"""The budget guard through the official SDKs: caps, loops, and blocks that never reach the provider."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

from llmguard import BudgetExceeded, Guard, GuardBlocked, GuardSettings, LoopDetected, ModelPrice, SessionLimits
from llmguard.policy import caps_for
from llmguard.testing import Scenario, SimulatedProvider
from tests.e2e.helpers import value

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


GuardFactory = Callable[..., Guard]


@pytest.fixture(params=["memory", "redis"])
async def make_guard(request: pytest.FixtureRequest, registry: CollectorRegistry) -> AsyncIterator[GuardFactory]:
    """Guards on the embedded store and on the real Redis server: the same behaviour is expected of both."""
    made: list[Guard] = []
    prefix = f"llmguard-test-guard-{uuid.uuid4().hex[:12]}"

    def make(**overrides: Any) -> Guard:
        if request.param == "redis":
            overrides = {"redis_url": "redis://127.0.0.1:6379/0", "redis_prefix": prefix,
                         "redis_timeout_seconds": 2.0, **overrides}  # fmt: skip
        guard = Guard(registry=registry, **overrides)
        made.append(guard)
        return guard

    yield make
    for guard in made:
        await guard.aclose()


@pytest.fixture
async def sdks(guard: Guard, provider_url: str) -> AsyncIterator[tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]]:
    # Default max_retries on purpose: a block must not be retried.
    oai = openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="t", http_client=guard.async_client())
    claude = anthropic.AsyncAnthropic(base_url=provider_url, api_key="t", http_client=guard.async_client())
    yield oai, claude
    await oai.close()
    await claude.close()


async def call(sdks: tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic], sdk: str, model: str | None = None) -> None:
    oai, claude = sdks
    messages: Any = [{"role": "user", "content": "hi"}]
    if sdk == "openai":
        await oai.chat.completions.create(model=model or "gpt-4o-mini", messages=messages, max_tokens=50)
    else:
        await claude.messages.create(model=model or "claude-sonnet-4-5", max_tokens=50, messages=messages)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_block_reaches_the_caller_at_once_with_no_request(
    make_guard: GuardFactory, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str, sdk: str
) -> None:
    guard = make_guard(session_max_llm_calls=1)
    oai = openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="t", http_client=guard.async_client())
    claude = anthropic.AsyncAnthropic(base_url=provider_url, api_key="t", http_client=guard.async_client())
    async with oai, claude, guard.session("capped", feature="f"):
        await call((oai, claude), sdk)
        started = time.perf_counter()
        with pytest.raises(GuardBlocked) as raised:
            await call((oai, claude), sdk)
        elapsed = time.perf_counter() - started
    assert elapsed < 0.05, elapsed
    assert isinstance(raised.value, BudgetExceeded) and raised.value.reason == "session_llm_calls"
    # It is also the SDK's own base error, which the SDKs re-raise as-is instead of wrapping and retrying.
    assert isinstance(raised.value, anthropic.AnthropicError if sdk == "anthropic" else openai.OpenAIError)
    assert len(provider.requests) == 1
    assert value(registry, "llmguard_guard_blocks_total", feature="f", reason="session_llm_calls") == 1


async def test_session_budget_is_reserved_before_the_call(
    make_guard: GuardFactory, provider: SimulatedProvider, provider_url: str
) -> None:
    provider.default = Scenario(output_tokens=40)  # input tokens: counted from the request, as a provider does
    guard = make_guard()
    limits = SessionLimits(budget_usd=0.0003)
    async with openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="t", http_client=guard.async_client()) as oai:
        async with guard.session("budgeted", limits=limits):
            calls = 0
            with pytest.raises(BudgetExceeded) as raised:
                for _ in range(100):
                    await oai.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=100
                    )
                    calls += 1
    state = await guard.get_session("budgeted")
    assert state is not None
    assert raised.value.reason == "session_budget" and raised.value.limit_usd == 0.0003
    assert state.spent_usd <= 0.0003 and state.held_usd == 0
    assert calls > 3 and len(provider.requests) == calls == state.llm_calls


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize(("model", "expected_calls"), [("sim-loop", 5), ("sim-cycle", 10)])
async def test_runaway_agent_is_stopped(
    make_guard: GuardFactory, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str, sdk: str,
    model: str, expected_calls: int,
) -> None:  # fmt: skip
    guard = make_guard(prices={model: ModelPrice(input_mtok=1.0, output_mtok=2.0)})
    oai = openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="t", http_client=guard.async_client())
    claude = anthropic.AsyncAnthropic(base_url=provider_url, api_key="t", http_client=guard.async_client())
    async with oai, claude, guard.session(f"agent-{sdk}-{model}", feature="agent"):
        with pytest.raises(LoopDetected):
            await run_agent(oai, claude, sdk, model, max_steps=50)
    # Five repeats of the loop's cycle (1 call for A→A, 2 for A→B), then the next call is refused.
    assert len(provider.requests) == expected_calls
    state = await guard.get_session(f"agent-{sdk}-{model}")
    assert state is not None and state.blocked_reason == "loop_detected" and state.tool_calls == expected_calls
    assert value(registry, "llmguard_loop_warnings_total", feature="agent") == 1


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_agent_making_progress_is_not_stopped(
    make_guard: GuardFactory, provider: SimulatedProvider, provider_url: str, sdk: str
) -> None:
    guard = make_guard(prices={"sim-agent": ModelPrice(input_mtok=1.0, output_mtok=2.0)})
    oai = openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="t", http_client=guard.async_client())
    claude = anthropic.AsyncAnthropic(base_url=provider_url, api_key="t", http_client=guard.async_client())
    async with oai, claude, guard.session("progress", feature="agent"):
        steps = await run_agent(oai, claude, sdk, "sim-agent", max_steps=50)
    assert steps == 4  # three lookups, then the answer
    state = await guard.get_session("progress")
    assert state is not None and state.blocked_reason is None and state.tool_calls == 3


async def run_agent(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, sdk: str, model: str, max_steps: int
) -> int:
    """A minimal tool-calling agent loop, as an application would write it."""
    if sdk == "openai":
        messages: list[Any] = [{"role": "user", "content": "do the task"}]
        for step in range(1, max_steps + 1):
            reply = await oai.chat.completions.create(model=model, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
            message = reply.choices[0].message
            if not message.tool_calls:
                return step
            messages.append(message.model_dump(exclude_none=True))
            for tool_call in message.tool_calls:
                messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": "result"})
        return max_steps
    history: list[Any] = [{"role": "user", "content": "do the task"}]
    tools: Any = [{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}]
    for step in range(1, max_steps + 1):
        answer = await claude.messages.create(model=model, max_tokens=100, messages=history, tools=tools)
        uses = [block for block in answer.content if block.type == "tool_use"]
        if not uses:
            return step
        history.append({"role": "assistant", "content": [block.model_dump() for block in answer.content]})
        results = [{"type": "tool_result", "tool_use_id": use.id, "content": "result"} for use in uses]
        history.append({"role": "user", "content": results})
    return max_steps


async def test_unpriced_model_under_a_cost_cap(
    registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    deny = Guard(registry=registry, session_budget_usd=1.0)
    async with openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="t", http_client=deny.async_client()) as oai:
        async with deny.session("unpriced"):
            with pytest.raises(BudgetExceeded) as raised:
                await oai.chat.completions.create(model="my-self-hosted-llama", messages=messages)
    assert raised.value.reason == "unpriced_model" and len(provider.requests) == 0

    allow = Guard(registry=CollectorRegistry(), session_budget_usd=1.0, unpriced_models="allow")
    async with openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="t", http_client=allow.async_client()) as oai:
        async with allow.session("unpriced-allowed"):
            for _ in range(3):
                await oai.chat.completions.create(model="my-self-hosted-llama", messages=messages)
    warnings = [r for r in caplog.records if "my-self-hosted-llama" in r.getMessage()]
    assert len(warnings) == 1 and len(provider.requests) == 3
    state = await allow.get_session("unpriced-allowed")
    assert state is not None and state.spent_usd == 0 and state.llm_calls == 3


async def test_end_session_observes_the_session_histograms(
    guard: Guard, registry: CollectorRegistry, sdks: tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]
) -> None:
    async with guard.session("ending"):
        await call(sdks, "openai")
        await call(sdks, "anthropic")
    ended = await guard.end_session("ending")
    assert ended is not None and ended.llm_calls == 2
    assert value(registry, "llmguard_session_llm_calls_count") == 1
    assert value(registry, "llmguard_session_llm_calls_sum") == 2
    assert value(registry, "llmguard_session_cost_usd_sum") == pytest.approx(ended.spent_usd)
    assert await guard.get_session("ending") is None


def test_session_limits_override_settings_one_by_one() -> None:
    settings = GuardSettings(session_budget_usd=5.0, session_max_tool_calls=50, daily_budget_usd=100.0)
    caps = caps_for(settings, SessionLimits(max_llm_calls=1))
    assert (caps.session_budget_usd, caps.session_max_llm_calls, caps.session_max_tool_calls) == (5.0, 1, 50)
    assert caps.daily_budget_usd == 100.0
    assert caps_for(settings, SessionLimits(budget_usd=0.5, max_tool_calls=3)).session_max_tool_calls == 3
