from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from llmguard.testing import Scenario, SimulatedProvider, ToolCall

MESSAGES: Any = [{"role": "user", "content": "hi"}]  # typed loosely: the SDKs want their TypedDicts


@pytest.fixture
def client(ant: anthropic.Anthropic) -> anthropic.Anthropic:
    return ant


def test_non_streamed_message_and_usage(provider: SimulatedProvider, client: anthropic.Anthropic) -> None:
    provider.default = Scenario(
        text="x y z", input_tokens=100, cache_read_tokens=60, cache_write_tokens=15, reasoning_tokens=2
    )
    message = client.messages.create(model="claude-sonnet", max_tokens=100, messages=MESSAGES)
    assert message.type == "message"
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "x y z"  # type: ignore[union-attr]
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (25, 60, 15)
    assert usage.output_tokens == 5
    assert usage.output_tokens_details is not None
    assert usage.output_tokens_details.thinking_tokens == 2


def test_stream_helper(provider: SimulatedProvider, client: anthropic.Anthropic) -> None:
    provider.default = Scenario(text="one two three", output_tokens=30, input_tokens=10, cache_read_tokens=4)
    with client.messages.stream(model="m", max_tokens=100, messages=MESSAGES) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert final.content[0].text == "one two three"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.output_tokens, final.usage.input_tokens, final.usage.cache_read_input_tokens) == (30, 6, 4)


def test_raw_stream_shape(provider: SimulatedProvider, http: httpx.Client) -> None:
    provider.default = Scenario(text="a b", output_tokens=12)
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": MESSAGES}
    response = http.post("/v1/messages", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["request-id"].startswith("req_")
    events = [block.split("\n") for block in response.text.strip("\n").split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    datas = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert datas[0]["message"]["usage"]["output_tokens"] == 1
    assert datas[-2]["usage"]["output_tokens"] == 12
    assert datas[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_streamed_tool_use(provider: SimulatedProvider, client: anthropic.Anthropic) -> None:
    calls = (ToolCall("get_weather", {"city": "Köln"}), ToolCall("noop", {}))
    provider.default = Scenario(text="Checking.", tool_calls=calls)
    with client.messages.stream(model="m", max_tokens=100, messages=MESSAGES) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    tools = [block for block in final.content if block.type == "tool_use"]
    assert [(t.name, t.input) for t in tools] == [("get_weather", {"city": "Köln"}), ("noop", {})]
    assert all(t.id.startswith("toolu_") for t in tools)


@pytest.mark.parametrize(
    ("neutral", "wire"), [("length", "max_tokens"), ("content_filter", "refusal"), ("tool_call", "end_turn")]
)
def test_stop_reasons(provider: SimulatedProvider, client: anthropic.Anthropic, neutral: str, wire: str) -> None:
    # "tool_call" without tool calls is not a tool call: only `tool_calls` makes one
    provider.default = Scenario(finish_reason=neutral if neutral != "tool_call" else "stop")
    message = client.messages.create(model="m", max_tokens=100, messages=MESSAGES)
    assert message.stop_reason == wire


@pytest.mark.parametrize(
    ("status", "error_class", "kind"),
    [
        (529, anthropic.OverloadedError, "overloaded_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
def test_http_errors(
    provider: SimulatedProvider,
    client: anthropic.Anthropic,
    status: int,
    error_class: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    provider.default = Scenario(error_status=status, retry_after=0.5)
    with pytest.raises(error_class) as caught:
        client.messages.create(model="m", max_tokens=100, messages=MESSAGES)
    error = caught.value
    assert error.status_code == status
    assert error.type == kind
    assert error.request_id == error.response.headers["request-id"]
    assert error.response.headers["retry-after"] == "0.5"
    assert isinstance(error.body, dict) and error.body["request_id"] == error.request_id


def test_mid_stream_error_raises(provider: SimulatedProvider, client: anthropic.Anthropic) -> None:
    provider.default = Scenario(error_after_chunks=3)
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        stream = client.messages.create(model="m", max_tokens=100, messages=MESSAGES, stream=True)
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)
    assert "".join(texts) == "Hello from the"
    assert caught.value.status_code == 200
    assert caught.value.type == "overloaded_error"


def test_stream_error_type_is_configurable(provider: SimulatedProvider, client: anthropic.Anthropic) -> None:
    provider.default = Scenario(error_after_chunks=0, stream_error_type="api_error", error_message="boom")
    stream = client.messages.stream(model="m", max_tokens=100, messages=MESSAGES)
    with pytest.raises(anthropic.APIStatusError) as caught, stream as events:
        events.get_final_message()
    assert caught.value.type == "api_error"
    assert "boom" in str(caught.value)


async def test_async_stream(provider: SimulatedProvider, base_url: str) -> None:
    provider.default = Scenario(text="async ✓")
    client = anthropic.AsyncAnthropic(base_url=base_url, api_key="x", max_retries=0)
    async with client, client.messages.stream(model="m", max_tokens=10, messages=MESSAGES) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == "async ✓"
