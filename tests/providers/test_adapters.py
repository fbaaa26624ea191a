"""Provider adapters on real wire shapes (wire-formats.md C and D), including the awkward ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmguard.providers import Adapter, apply_error_body, match
from llmguard.record import CallRecord
from llmguard.sse import SSEParser


def record_for(adapter: Adapter) -> CallRecord:
    return CallRecord(call_id="c", provider="p", api=adapter.api, model="m", stream=True, started_at=0.0)


def stream(path: str, wire: str) -> tuple[CallRecord, int]:
    """Feed an SSE body; return the record and how many events carried content."""
    adapter = match("POST", path)
    assert adapter is not None
    record = record_for(adapter)
    parser = adapter.parser(record)
    sse = SSEParser()
    content = sum(parser.event(event) for event in [*sse.feed(wire.encode()), *sse.close()])
    return record, content


def chat_chunk(choices: list[Any], **extra: Any) -> str:
    return "data: " + json.dumps({"id": "x", "model": "gpt-4o-2024", "choices": choices, **extra}) + "\n\n"


def test_chat_content_in_any_json_spacing_and_azure_filter_chunk() -> None:
    wire = (
        chat_chunk([], prompt_filter_results=[{"prompt_index": 0}])  # Azure: first chunk, no choices
        + chat_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
        + 'data: {"id":"x","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
        + chat_chunk([{"index": 0, "delta": {"content": " there"}, "finish_reason": None}])  # spaces
        + chat_chunk([{"index": 0, "delta": {"refusal": "no"}}])
        + chat_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        + "data: [DONE]\n\n"
    )
    record, content = stream("/v1/chat/completions", wire)
    assert content == 3 and record.finish_reason == "stop" and record.terminal
    assert record.response_model == "gpt-4o-2024" and not record.usage_known


USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 7,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 7,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def test_chat_tool_call_fragments_are_grouped_by_choice_and_index() -> None:
    def call(index: int, **function: Any) -> dict[str, Any]:
        return {"index": index, "function": function}

    wire = (
        chat_chunk([{"index": 0, "delta": {"tool_calls": [{**call(0, name="lookup", arguments=""), "id": "a"}]}}])
        + chat_chunk([{"index": 0, "delta": {"tool_calls": [call(0, arguments='{"q": ')]}}])
        + chat_chunk([{"index": 0, "delta": {"tool_calls": [call(0, arguments=None)]}}])
        + chat_chunk([{"index": 0, "delta": {"tool_calls": [{**call(1, name="fetch", arguments="{}"), "id": "b"}]}}])
        + chat_chunk([{"index": 0, "delta": {"tool_calls": [call(0, arguments='"x"}')]}}])
        + chat_chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])
        + chat_chunk([], usage=USAGE)
    )
    record, _ = stream("/openai/deployments/gpt/chat/completions", wire)
    assert [(t.name, t.signature()) for t in record.tool_calls] == [
        ("lookup", 'lookup:{"q":"x"}'),
        ("fetch", "fetch:{}"),
    ]
    assert record.finish_reason == "tool_call"
    assert (record.usage.input, record.usage.cache_read, record.usage.output, record.usage.reasoning) == (6, 4, 7, 2)


def test_chat_error_inside_a_200_stream() -> None:
    error = {"message": "The server had an error", "type": "server_error", "param": None, "code": None}
    record, _ = stream("/v1/chat/completions", chat_chunk([{"index": 0, "delta": {"content": "a"}}])
                       + "data: " + json.dumps({"error": error}) + "\n\n")  # fmt: skip
    assert (record.outcome, record.error_type, record.finish_reason) == ("error", "server_error", "error")


@pytest.mark.parametrize(
    ("terminal", "finish", "error"),
    [
        ({"type": "response.incomplete", "response": {"status": "incomplete",
          "incomplete_details": {"reason": "max_output_tokens"}}}, "length", None),
        ({"type": "response.incomplete", "response": {"status": "incomplete",
          "incomplete_details": {"reason": "content_filter"}}}, "content_filter", None),
        ({"type": "response.failed", "response": {"status": "failed",
          "error": {"code": "rate_limit_exceeded", "message": "slow down"}}}, "error", "rate_limit"),
        ({"type": "error", "code": "server_error", "message": "oops", "param": None}, "error", "server_error"),
    ],
)  # fmt: skip
def test_responses_terminal_events(terminal: dict[str, Any], finish: str, error: str | None) -> None:
    wire = (
        'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
        f"event: {terminal['type']}\ndata: {json.dumps(terminal)}\n\n"
    )
    record, content = stream("/v1/responses", wire)
    assert content == 1 and record.terminal
    assert record.finish_reason == finish and record.error_type == error


def anthropic_event(kind: str, **data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


def test_anthropic_usage_is_cumulative_and_refusal_is_a_content_filter() -> None:
    usage = {"input_tokens": 12, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 30, "output_tokens": 3}
    wire = (
        anthropic_event("message_start", message={"model": "claude-x", "usage": usage})
        + anthropic_event("ping")
        + anthropic_event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""})
        + anthropic_event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hm"})
        + anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "No"})
        + anthropic_event("message_delta", delta={"stop_reason": "refusal"},
                          usage={"output_tokens": 40, "output_tokens_details": {"thinking_tokens": 25}})
        + anthropic_event("message_delta", delta={}, usage={"output_tokens": 41})
        + anthropic_event("message_stop")
    )  # fmt: skip
    record, content = stream("/v1/messages", wire)
    assert content == 2 and record.terminal and record.finish_reason == "content_filter"
    u = record.usage
    assert (u.input, u.cache_read, u.cache_write, u.output, u.reasoning) == (12, 100, 30, 41, 25)


def test_anthropic_error_event_and_stream_cut_before_the_end() -> None:
    wire = anthropic_event("message_start", message={"usage": {"input_tokens": 5, "output_tokens": 1}}) + (
        anthropic_event("error", error={"type": "overloaded_error", "message": "Overloaded"})
    )
    record, _ = stream("/v1/messages", wire)
    assert record.error_type == "overloaded" and record.terminal


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, {"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}, "quota_exhausted"),
        (429, {"error": {"type": "insufficient_quota", "code": "credit_balance_exhausted"}}, "quota_exhausted"),
        (429, {"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded"}}, "rate_limit"),
        (400, {"error": {"type": "invalid_request_error", "code": "context_length_exceeded"}}, "context_length"),
        (400, {"error": {"type": "invalid_request_error", "code": "content_filter"}}, "content_filter"),
        (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "overloaded"),
        (503, {"error": {"type": "service_unavailable_error", "code": "server_is_overloaded"}}, "overloaded"),
        (401, {"type": "error", "error": {"type": "authentication_error"}}, "auth"),
        (402, {"type": "error", "error": {"type": "billing_error"}}, "quota_exhausted"),
        (504, None, "timeout"),
        (500, "not json at all", "server_error"),
        (404, {"error": {"code": "model_not_found"}}, "bad_request"),
    ],
)
def test_http_error_bodies(status: int, body: Any, expected: str) -> None:
    adapter = match("POST", "/v1/chat/completions")
    assert adapter is not None
    record = record_for(adapter)
    apply_error_body(record, status, body)
    assert record.error_type == expected and record.outcome == "error"


def test_only_llm_paths_are_matched() -> None:
    assert match("POST", "/v1/embeddings") is None
    assert match("GET", "/v1/responses") is None
    assert match("POST", "/v1/messages/count_tokens") is None
    assert match("POST", "/v1/threads/abc/messages") is None


def test_responses_from_a_server_that_sends_only_data_lines() -> None:
    delta = {"type": "response.output_text.delta", "delta": "Hi"}
    done = {"type": "response.completed", "response": {"status": "completed", "usage": {"input_tokens": 3,
            "output_tokens": 1}}}  # fmt: skip
    record, content = stream("/v1/responses", f"data: {json.dumps(delta)}\n\ndata: {json.dumps(done)}\n\n")
    assert content == 1 and record.terminal and record.finish_reason == "stop" and record.usage.output == 1


@pytest.mark.parametrize(
    ("code", "expected"),
    [("image_content_policy_violation", "content_filter"), ("bio_policy", "content_filter"),
     ("vector_store_timeout", "timeout"), ("invalid_prompt", "bad_request"), ("server_error", "server_error")],
)  # fmt: skip
def test_responses_failure_codes(code: str, expected: str) -> None:
    failed = {"type": "response.failed", "response": {"status": "failed", "error": {"code": code, "message": "x"}}}
    record, _ = stream("/v1/responses", f"event: response.failed\ndata: {json.dumps(failed)}\n\n")
    assert record.error_type == expected


def test_anthropic_prompt_too_long_is_a_context_length_error() -> None:
    adapter = match("POST", "/v1/messages")
    assert adapter is not None
    record = record_for(adapter)
    body = {"type": "error", "error": {"type": "invalid_request_error",
            "message": "prompt is too long: 208656 tokens > 200000 maximum"}}  # fmt: skip
    apply_error_body(record, 400, body)
    assert record.error_type == "context_length"


def test_refusals_are_content_filter_outcomes() -> None:
    chat, _ = stream(
        "/v1/chat/completions",
        chat_chunk([{"index": 0, "delta": {"refusal": "I can't help with that."}}])
        + chat_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        + "data: [DONE]\n\n",
    )
    assert chat.refused and chat.finish_reason == "stop"  # the ledger turns a refused "stop" into content_filter
    refusal = {"type": "response.refusal.delta", "delta": "No."}
    done = {"type": "response.completed", "response": {"status": "completed", "output": []}}
    responses, content = stream(
        "/v1/responses",
        f"event: response.refusal.delta\ndata: {json.dumps(refusal)}\n\n"
        f"event: response.completed\ndata: {json.dumps(done)}\n\n",
    )
    assert responses.refused and content == 1
