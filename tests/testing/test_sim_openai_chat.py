from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from llmguard.testing import Scenario, SimulatedProvider, ToolCall

MESSAGES: Any = [{"role": "user", "content": "hi"}]  # typed loosely: the SDKs want their TypedDicts


@pytest.fixture
def client(oai: openai.OpenAI) -> openai.OpenAI:
    return oai


def test_non_streamed_text_and_usage(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    provider.default = Scenario(
        text="one two three", input_tokens=100, cache_read_tokens=40, cache_write_tokens=10, reasoning_tokens=5
    )
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert choice.message.content == "one two three"
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (100, 8, 108)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 40
    assert usage.prompt_tokens_details.cache_write_tokens == 10
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 5


def test_stream_with_include_usage(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    provider.default = Scenario(output_tokens=42, input_tokens=7)
    stream = client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert not chunks[0].choices[0].delta.content
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == Scenario().text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 42)
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(http: httpx.Client) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    response = http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-request-id"].startswith("req_")
    datas = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


def test_streamed_tool_calls(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    calls = (ToolCall("get_weather", {"city": "Zürich", "days": 3}), ToolCall("get_time", {}))
    provider.default = Scenario(text="", tool_calls=calls)
    with client.chat.completions.stream(model="m", messages=MESSAGES) as stream:
        raw = [event.chunk for event in stream if event.type == "chunk"]
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    got = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
    assert got == [("get_weather", {"city": "Zürich", "days": 3}), ("get_time", {})]
    firsts = [tc for c in raw if c.choices for tc in c.choices[0].delta.tool_calls or [] if tc.id]
    assert [(tc.index, tc.type, tc.function and tc.function.arguments) for tc in firsts] == [
        (0, "function", ""),
        (1, "function", ""),
    ]


def test_non_streamed_tool_calls(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    provider.default = Scenario(text="", tool_calls=(ToolCall("lookup", {"q": "x"}),))
    completion = client.chat.completions.create(model="m", messages=MESSAGES)
    tool_calls = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert tool_calls is not None and tool_calls[0].id.startswith("call_")
    assert json.loads(tool_calls[0].function.arguments) == {"q": "x"}  # type: ignore[union-attr]


@pytest.mark.parametrize(("neutral", "wire"), [("length", "length"), ("content_filter", "content_filter")])
def test_finish_reasons(provider: SimulatedProvider, client: openai.OpenAI, neutral: str, wire: str) -> None:
    provider.default = Scenario(finish_reason=neutral)
    completion = client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].finish_reason == wire


@pytest.mark.parametrize(
    ("status", "error_class", "kind", "code"),
    [
        (429, openai.RateLimitError, "rate_limit_error", "rate_limit_exceeded"),
        (500, openai.InternalServerError, "server_error", None),
        (503, openai.InternalServerError, "service_unavailable_error", "server_is_overloaded"),
        (400, openai.BadRequestError, "invalid_request_error", None),
    ],
)
def test_http_errors(
    provider: SimulatedProvider,
    client: openai.OpenAI,
    status: int,
    error_class: type[openai.APIStatusError],
    kind: str,
    code: str | None,
) -> None:
    provider.default = Scenario(error_status=status, retry_after=2)
    with pytest.raises(error_class) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    error = caught.value
    assert error.status_code == status
    assert (error.type, error.code, error.param) == (kind, code, None)
    assert error.response.headers["retry-after"] == "2"
    assert error.response.headers["content-type"] == "application/json"


def test_mid_stream_error_raises(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    provider.default = Scenario(error_after_chunks=2)
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    texts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts) == "Hello from"
    assert caught.value.type == "server_error"


async def test_async_stream(provider: SimulatedProvider, base_url: str) -> None:
    provider.default = Scenario(text="async works")
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "async works"
