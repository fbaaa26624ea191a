"""The official anthropic SDK, unchanged, against the simulated provider over real HTTP: every metric exact."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import pytest
from prometheus_client import CollectorRegistry

from llmguard import Guard
from llmguard.testing import Scenario, SimulatedProvider, ToolCall
from tests.e2e.helpers import price, total, value

MODEL = "claude-sonnet-4-5"
LABELS = {"provider": "anthropic", "model": MODEL, "feature": "assist"}
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
async def claude(guard: Guard, provider_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=provider_url, api_key="test", http_client=guard.async_client())
    yield client
    await client.close()


def tokens(registry: CollectorRegistry) -> dict[str, float]:
    kinds = ("input", "cache_read", "cache_write", "output", "reasoning")
    return {kind: value(registry, "llmguard_tokens_total", **LABELS, type=kind) for kind in kinds}


@pytest.mark.parametrize("stream", [False, True])
async def test_messages(
    guard: Guard,
    registry: CollectorRegistry,
    provider: SimulatedProvider,
    claude: anthropic.AsyncAnthropic,
    stream: bool,
) -> None:
    provider.default = Scenario(
        input_tokens=2000, cache_read_tokens=1500, cache_write_tokens=300, content_chunks=20, reasoning_tokens=5
    )
    async with guard.session("s-messages", feature="assist"):
        if stream:
            events = await claude.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
            _ = [event async for event in events]
        else:
            message = await claude.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
            assert message.usage.cache_read_input_tokens == 1500

    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="success", finish_reason="stop") == 1
    # Anthropic's input_tokens excludes the cache; streamed output is cumulative and replaces, never adds.
    assert tokens(registry) == {"input": 200, "cache_read": 1500, "cache_write": 300, "output": 25, "reasoning": 5}
    expected = price("anthropic", MODEL, input=2000, cache_read=1500, cache_write=300, output=25)
    assert value(registry, "llmguard_cost_usd_total", **LABELS) == pytest.approx(expected, rel=1e-12)
    assert value(registry, "llmguard_cache_requests_total", **LABELS, result="hit") == 1
    assert value(registry, "llmguard_time_to_first_token_seconds_count", **LABELS) == (1 if stream else 0)
    assert value(registry, "llmguard_output_tokens_per_second_count", **LABELS) == (1 if stream else 0)
    assert value(registry, "llmguard_llm_call_duration_seconds_count", **LABELS, stream=str(stream).lower()) == 1
    state = await guard.get_session("s-messages")
    assert state is not None and state.spent_usd == pytest.approx(expected, rel=1e-12) and state.held_usd == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_tool_use(
    guard: Guard,
    registry: CollectorRegistry,
    provider: SimulatedProvider,
    claude: anthropic.AsyncAnthropic,
    stream: bool,
) -> None:
    provider.default = Scenario(tool_calls=(ToolCall("lookup", {"q": "x"}), ToolCall("fetch", {"url": "u"})))
    async with guard.session("s-tool-use", feature="assist"):
        if stream:
            events = await claude.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
            _ = [event async for event in events]
        else:
            await claude.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES)  # type: ignore[arg-type]
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="success", finish_reason="tool_call") == 1
    assert value(registry, "llmguard_tool_calls_total", **LABELS) == 2


async def test_overloaded_529_with_sdk_retries(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, claude: anthropic.AsyncAnthropic
) -> None:
    provider.default = Scenario(error_status=529, retry_after=0.001)
    async with guard.session("s-529", feature="assist"):
        with pytest.raises(anthropic.APIStatusError) as raised:
            await claude.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)  # type: ignore[arg-type]
    assert raised.value.status_code == 529
    assert len(provider.requests) == 3
    assert value(registry, "llmguard_errors_total", **LABELS, error_type="overloaded") == 3
    assert value(registry, "llmguard_llm_retries_total", **LABELS) == 2
    assert total(registry, "llmguard_llm_calls_total") == 1
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="error", finish_reason="error") == 1


async def test_rate_limit_429_without_retries(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, claude: anthropic.AsyncAnthropic
) -> None:
    provider.default = Scenario(error_status=429)
    async with guard.session("s-429", feature="assist"):
        with pytest.raises(anthropic.RateLimitError):
            await claude.with_options(max_retries=0).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)  # type: ignore[arg-type]
    assert value(registry, "llmguard_errors_total", **LABELS, error_type="rate_limit") == 1
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="error", finish_reason="error") == 1


async def test_mid_stream_overloaded_event(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, claude: anthropic.AsyncAnthropic
) -> None:
    provider.default = Scenario(content_chunks=10, error_after_chunks=4)
    async with guard.session("s-mid", feature="assist"):
        events = await claude.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        with pytest.raises(anthropic.APIStatusError):
            _ = [event async for event in events]
    assert value(registry, "llmguard_errors_total", **LABELS, error_type="overloaded") == 1
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="error", finish_reason="error") == 1


async def test_abandoned_stream(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, claude: anthropic.AsyncAnthropic
) -> None:
    provider.default = Scenario(content_chunks=50, chunk_gap=0.005)
    async with guard.session("s-abandon", feature="assist"):
        async with claude.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:  # type: ignore[arg-type]
            async for _text in stream.text_stream:
                break
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="cancelled", finish_reason="unknown") == 1
    assert total(registry, "llmguard_errors_total") == 0
