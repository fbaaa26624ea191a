from __future__ import annotations

import json

import httpx
import openai
import pytest

from llmguard.testing import Scenario, SimulatedProvider, ToolCall


@pytest.fixture
def client(oai: openai.OpenAI) -> openai.OpenAI:
    return oai


def test_non_streamed_text_and_usage(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    provider.default = Scenario(
        text="a b", input_tokens=50, cache_read_tokens=20, cache_write_tokens=5, reasoning_tokens=3
    )
    response = client.responses.create(model="gpt-5", input="hi")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "a b"
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (50, 5, 55)
    assert usage.input_tokens_details.cached_tokens == 20
    assert usage.input_tokens_details.cache_write_tokens == 5
    assert usage.output_tokens_details.reasoning_tokens == 3


def test_stream_helper_text(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    provider.default = Scenario(text="streamed words here", output_tokens=9)
    with client.responses.stream(model="m", input="hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds.count("response.output_text.delta") == 3
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "streamed words here"
    assert final.usage is not None and final.usage.output_tokens == 9


def test_raw_stream_sequence_numbers_and_no_done(http: httpx.Client) -> None:
    response = http.post("/v1/responses", json={"model": "m", "input": "x", "stream": True})
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = [block.split("\n") for block in response.text.strip("\n").split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    datas = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert [d["type"] for d in datas] == names
    assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
    assert names[-1] == "response.completed"
    assert "[DONE]" not in response.text


def test_streamed_function_calls(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    calls = (ToolCall("search", {"query": "naïve ✓"}), ToolCall("fetch", {"id": 7}))
    provider.default = Scenario(text="Let me check.", tool_calls=calls)
    with client.responses.stream(model="m", input="hi") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "Let me check."
    items = [item for item in final.output if item.type == "function_call"]
    assert [(i.name, json.loads(i.arguments)) for i in items] == [
        ("search", {"query": "naïve ✓"}),
        ("fetch", {"id": 7}),
    ]
    assert all(i.call_id.startswith("call_") for i in items)


def test_non_streamed_function_call(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    provider.default = Scenario(text="", tool_calls=(ToolCall("lookup", {"k": 1}),))
    response = client.responses.create(model="m", input="hi")
    assert [item.type for item in response.output] == ["function_call"]
    call = response.output[0]
    assert call.type == "function_call"
    assert (call.name, call.arguments) == ("lookup", '{"k": 1}')


@pytest.mark.parametrize(("neutral", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_incomplete(provider: SimulatedProvider, client: openai.OpenAI, neutral: str, reason: str) -> None:
    provider.default = Scenario(finish_reason=neutral)
    with client.responses.stream(model="m", input="hi") as stream:
        last = [event for event in stream][-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == reason
    response = client.responses.create(model="m", input="hi")
    assert response.status == "incomplete"


def test_mid_stream_error_event(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    provider.default = Scenario(error_after_chunks=1)
    events = list(client.responses.create(model="m", input="hi", stream=True))
    assert [e.type for e in events][-2:] == ["response.output_text.delta", "error"]
    error = events[-1]
    assert error.type == "error"
    assert (error.code, error.param, error.sequence_number) == ("server_error", None, len(events) - 1)


def test_rate_limit(provider: SimulatedProvider, client: openai.OpenAI) -> None:
    provider.default = Scenario(error_status=429)
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="m", input="hi")
    assert caught.value.code == "rate_limit_exceeded"
