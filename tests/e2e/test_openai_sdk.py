"""The official openai SDK, unchanged, against the simulated provider over real HTTP: every metric exact."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import openai
import pytest
from prometheus_client import CollectorRegistry

from llmguard import Guard
from llmguard.testing import Scenario, SimulatedProvider, ToolCall, serve
from llmguard.types import Receive, Scope, Send
from tests.e2e.helpers import price, total, value

MODEL = "gpt-4o-mini"
LABELS = {"provider": "openai", "model": MODEL, "feature": "chat"}
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
async def oai(guard: Guard, provider_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="test", http_client=guard.async_client())
    yield client
    await client.close()


def assert_usage(registry: CollectorRegistry, *, input: int, cache_read: int, output: int, reasoning: int = 0) -> None:
    for kind, expected in (("input", input), ("cache_read", cache_read), ("output", output), ("reasoning", reasoning)):
        assert value(registry, "llmguard_tokens_total", **LABELS, type=kind) == expected, kind
    assert value(registry, "llmguard_tokens_total", **LABELS, type="cache_write") == 0


async def test_chat_completion(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI
) -> None:
    provider.default = Scenario(input_tokens=1200, cache_read_tokens=1000, output_tokens=30, reasoning_tokens=4)
    async with guard.session("s-chat", feature="chat"):
        reply = await oai.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.usage is not None and reply.usage.completion_tokens == 30

    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="success", finish_reason="stop") == 1
    assert_usage(registry, input=200, cache_read=1000, output=30, reasoning=4)
    expected_cost = price("openai", MODEL, input=1200, cache_read=1000, output=30)
    assert value(registry, "llmguard_cost_usd_total", **LABELS) == pytest.approx(expected_cost, rel=1e-12)
    assert value(registry, "llmguard_cache_requests_total", **LABELS, result="hit") == 1
    assert value(registry, "llmguard_llm_call_duration_seconds_count", **LABELS, stream="false") == 1
    assert value(registry, "llmguard_time_to_first_token_seconds_count", **LABELS) == 0  # not a stream
    assert value(registry, "llmguard_output_tokens_per_second_count", **LABELS) == 0
    assert total(registry, "llmguard_errors_total") == 0
    assert total(registry, "llmguard_tool_calls_total") == 0
    state = await guard.get_session("s-chat")
    assert state is not None and state.llm_calls == 1
    assert state.spent_usd == pytest.approx(expected_cost, rel=1e-12)
    assert state.held_usd == 0


async def test_chat_completion_stream(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI
) -> None:
    provider.default = Scenario(input_tokens=80, content_chunks=12, chunk_gap=0.002)
    async with guard.session("s-stream", feature="chat"):
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None

    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="success", finish_reason="stop") == 1
    assert_usage(registry, input=80, cache_read=0, output=12)
    assert value(registry, "llmguard_cache_requests_total", **LABELS, result="miss") == 1
    assert value(registry, "llmguard_cost_usd_total", **LABELS) == pytest.approx(
        price("openai", MODEL, input=80, output=12)
    )
    assert value(registry, "llmguard_llm_call_duration_seconds_count", **LABELS, stream="true") == 1
    assert value(registry, "llmguard_time_to_first_token_seconds_count", **LABELS) == 1
    assert value(registry, "llmguard_output_tokens_per_second_count", **LABELS) == 1


async def test_chat_stream_without_usage_counts_no_tokens(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI
) -> None:
    """Without `stream_options.include_usage` OpenAI sends no usage: nothing is invented."""
    provider.default = Scenario(content_chunks=5)
    async with guard.session("s-nousage", feature="chat"):
        stream = await oai.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        _ = [chunk async for chunk in stream]
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="success", finish_reason="stop") == 1
    assert total(registry, "llmguard_tokens_total") == 0
    assert total(registry, "llmguard_cost_usd_total") == 0
    assert value(registry, "llmguard_output_tokens_per_second_count", **LABELS) == 0
    assert value(registry, "llmguard_time_to_first_token_seconds_count", **LABELS) == 1
    # The session is still charged: an estimate from the request and the streamed deltas, exported as such.
    state = await guard.get_session("s-nousage")
    assert state is not None and state.spent_usd > 0 and state.held_usd == 0
    assert value(registry, "llmguard_estimated_cost_usd_total", **LABELS) == pytest.approx(state.spent_usd)


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_tool_calls(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI, stream: bool
) -> None:
    provider.default = Scenario(
        text="", input_tokens=50, tool_calls=(ToolCall("lookup", {"q": "a"}), ToolCall("lookup", {"q": "b"}))
    )
    async with guard.session("s-tools", feature="chat"):
        if stream:
            response = await oai.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},  # type: ignore[arg-type]
            )
            _ = [chunk async for chunk in response]
        else:
            reply = await oai.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
            assert reply.choices[0].message.tool_calls is not None and len(reply.choices[0].message.tool_calls) == 2
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="success", finish_reason="tool_call") == 1
    assert value(registry, "llmguard_tool_calls_total", **LABELS) == 2
    state = await guard.get_session("s-tools")
    assert state is not None and state.tool_calls == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_responses(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI, stream: bool
) -> None:
    provider.default = Scenario(input_tokens=300, cache_read_tokens=256, content_chunks=9, reasoning_tokens=3)
    async with guard.session("s-responses", feature="chat"):
        if stream:
            events = await oai.responses.create(model=MODEL, input="Say hello", stream=True)
            _ = [event async for event in events]
        else:
            await oai.responses.create(model=MODEL, input="Say hello")
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="success", finish_reason="stop") == 1
    assert_usage(registry, input=44, cache_read=256, output=12, reasoning=3)
    expected_cost = price("openai", MODEL, input=300, cache_read=256, output=12)
    assert value(registry, "llmguard_cost_usd_total", **LABELS) == pytest.approx(expected_cost, rel=1e-12)
    assert value(registry, "llmguard_time_to_first_token_seconds_count", **LABELS) == (1 if stream else 0)
    assert value(registry, "llmguard_llm_call_duration_seconds_count", **LABELS, stream=str(stream).lower()) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_tool_calls(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI, stream: bool
) -> None:
    provider.default = Scenario(text="", tool_calls=(ToolCall("lookup", {"q": "a"}),))
    async with guard.session("s-rtools", feature="chat"):
        if stream:
            events = await oai.responses.create(model=MODEL, input="x", stream=True)
            _ = [event async for event in events]
        else:
            await oai.responses.create(model=MODEL, input="x")
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="success", finish_reason="tool_call") == 1
    assert value(registry, "llmguard_tool_calls_total", **LABELS) == 1


async def test_rate_limit_with_sdk_retries_is_one_logical_call(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI
) -> None:
    provider.default = Scenario(error_status=429, retry_after=0.001)
    async with guard.session("s-429", feature="chat"):
        with pytest.raises(openai.RateLimitError):
            await oai.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert len(provider.requests) == 3  # the SDK's default max_retries=2
    assert value(registry, "llmguard_errors_total", **LABELS, error_type="rate_limit") == 3
    assert value(registry, "llmguard_llm_retries_total", **LABELS) == 2
    assert total(registry, "llmguard_llm_calls_total") == 1
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="error", finish_reason="error") == 1
    assert total(registry, "llmguard_tokens_total") == 0
    state = await guard.get_session("s-429")
    assert state is not None and state.llm_calls == 1 and state.spent_usd == 0 and state.held_usd == 0


async def test_retry_that_succeeds_counts_one_successful_call(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI
) -> None:
    provider.set_scenario(MODEL, [Scenario(error_status=500, retry_after=0.001), Scenario(input_tokens=10)])
    async with guard.session("s-retry", feature="chat"):
        await oai.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert value(registry, "llmguard_errors_total", **LABELS, error_type="server_error") == 1
    assert value(registry, "llmguard_llm_retries_total", **LABELS) == 1
    assert total(registry, "llmguard_llm_calls_total") == 1
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="success", finish_reason="stop") == 1


async def test_mid_stream_error(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI
) -> None:
    provider.default = Scenario(content_chunks=10, error_after_chunks=3)
    async with guard.session("s-midstream", feature="chat"):
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        with pytest.raises(openai.APIError):
            _ = [chunk async for chunk in stream]
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="error", finish_reason="error") == 1
    assert value(registry, "llmguard_errors_total", **LABELS, error_type="server_error") == 1
    assert len(provider.requests) == 1  # an error inside a 200 stream is not retried


async def test_abandoned_stream(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI
) -> None:
    provider.default = Scenario(content_chunks=40, chunk_gap=0.005)
    async with guard.session("s-abandon", feature="chat"):
        stream = await oai.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        seen = 0
        async for _chunk in stream:
            seen += 1
            if seen == 5:
                break
        await stream.close()
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="cancelled", finish_reason="unknown") == 1
    assert total(registry, "llmguard_llm_calls_total") == 1
    assert total(registry, "llmguard_errors_total") == 0
    assert total(registry, "llmguard_tokens_total") == 0
    state = await guard.get_session("s-abandon")
    # Usage never arrived: the session is charged the call's hold (its worst case: 1 + 4096 default output
    # tokens), and no hold is left; the charge is exported as an estimate.
    assert state is not None and state.held_usd == 0
    assert state.spent_usd > price("openai", MODEL, input=0, output=4096)
    assert value(registry, "llmguard_estimated_cost_usd_total", **LABELS) == pytest.approx(state.spent_usd)


async def test_retries_outside_any_session_are_one_logical_call(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI
) -> None:
    provider.set_scenario(MODEL, [Scenario(error_status=500, retry_after=0.001), Scenario(input_tokens=10)])
    await oai.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    labels = {**LABELS, "feature": "unknown"}
    assert value(registry, "llmguard_errors_total", **labels, error_type="server_error") == 1
    assert value(registry, "llmguard_llm_retries_total", **labels) == 1
    assert total(registry, "llmguard_llm_calls_total") == 1
    assert value(registry, "llmguard_llm_calls_total", **labels, outcome="success", finish_reason="stop") == 1


async def test_a_failure_without_sdk_retries_is_counted_at_once(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    provider.default = Scenario(error_status=429)
    async with guard.async_client() as client:  # plain httpx2: nobody will retry it
        response = await client.post(f"{provider_url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    assert response.status_code == 429
    labels = {**LABELS, "feature": "unknown"}
    assert value(registry, "llmguard_llm_calls_total", **labels, outcome="error", finish_reason="error") == 1


async def test_refusal_is_counted_as_a_content_filter_outcome(
    guard: Guard, registry: CollectorRegistry, provider_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    refusal = {"id": "c", "object": "chat.completion", "model": MODEL,
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."}}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 6}}  # fmt: skip

    async def refusing(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = json.dumps(refusal).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    with serve(refusing) as url:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="t", http_client=guard.async_client()) as client:
            async with guard.session("refused", feature="chat"):
                reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.choices[0].message.refusal
    assert value(registry, "llmguard_llm_calls_total", **LABELS, outcome="success", finish_reason="content_filter") == 1
    digest = hashlib.sha256(json.dumps(MESSAGES, sort_keys=True).encode()).hexdigest()
    logged = [r.getMessage() for r in caplog.records if "content filter" in r.getMessage()]
    assert len(logged) == 1 and digest in logged[0]
