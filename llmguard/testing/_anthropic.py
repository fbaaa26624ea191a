"""Anthropic Messages wire format (``POST …/messages``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ._generation import Event, Generation, StreamPlan, new_id

__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_SSE",
    "error_body",
    "new_request_id",
    "render_json",
    "render_stream",
    "response_headers",
    "usage",
]

CONTENT_TYPE_SSE = "text/event-stream"
CONTENT_TYPE_JSON = "application/json"

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_call": "tool_use", "content_filter": "refusal"}
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request (simulated)."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    409: ("conflict_error", "Conflict"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization (simulated)."),
    500: ("api_error", "Internal server error"),
    503: ("overloaded_error", "Overloaded"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}
_STREAM_MESSAGES = {"overloaded_error": "Overloaded", "api_error": "Internal server error"}


def new_request_id() -> str:
    return new_id("req_011C", 20)


def error_body(status: int, message: str | None, request_id: str) -> dict[str, Any]:
    """The exact Anthropic error JSON for an HTTP status."""
    default = ("invalid_request_error", "Invalid request.") if status < 500 else _ERRORS[500]
    kind, text = _ERRORS.get(status, default)
    return {"type": "error", "error": {"type": kind, "message": message or text}, "request_id": request_id}


def response_headers(request_id: str, input_tokens: int, elapsed_ms: int, status: int) -> dict[str, str]:
    """Realistic Anthropic response headers (request id, rate limits, retry hint on errors)."""
    reset = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {
        "request-id": request_id,
        "anthropic-organization-id": "00000000-0000-4000-8000-000000000000",
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": "3999",
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-input-tokens-limit": "400000",
        "anthropic-ratelimit-input-tokens-remaining": str(max(0, 400000 - input_tokens)),
        "anthropic-ratelimit-input-tokens-reset": reset,
        "anthropic-ratelimit-output-tokens-limit": "80000",
        "anthropic-ratelimit-output-tokens-remaining": "80000",
        "anthropic-ratelimit-output-tokens-reset": reset,
    }
    if status >= 400:
        headers["x-should-retry"] = "true" if status in (408, 409, 429) or status >= 500 else "false"
    return headers


def stop_reason(gen: Generation) -> str:
    return _STOP.get(gen.finish_reason, gen.finish_reason)


def usage(gen: Generation, output_tokens: int | None = None) -> dict[str, Any]:
    """Anthropic usage: ``input_tokens`` excludes the cache reads and writes."""
    data: dict[str, Any] = {
        "input_tokens": max(0, gen.input_tokens - gen.cache_read - gen.cache_write),
        "cache_creation_input_tokens": gen.cache_write,
        "cache_read_input_tokens": gen.cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": gen.cache_write, "ephemeral_1h_input_tokens": 0},
        "output_tokens": gen.output_tokens if output_tokens is None else output_tokens,
        "service_tier": "standard",
    }
    if gen.reasoning and output_tokens is None:
        data["output_tokens_details"] = {"thinking_tokens": gen.reasoning}
    return data


def _stop_details(gen: Generation) -> dict[str, Any]:
    if stop_reason(gen) != "refusal":
        return {}
    return {"stop_details": {"type": "refusal", "category": None, "explanation": None}}


def render_json(gen: Generation) -> dict[str, Any]:
    """The non-streamed ``message`` object."""
    content: list[dict[str, Any]] = [{"type": "text", "text": gen.text}] if gen.text_pieces else []
    content += [
        {"type": "tool_use", "id": new_id("toolu_01", 22), "name": t.name, "input": t.arguments} for t in gen.tools
    ]
    return {
        "id": new_id("msg_01", 22),
        "type": "message",
        "role": "assistant",
        "model": gen.model,
        "content": content,
        "stop_reason": stop_reason(gen),
        "stop_sequence": None,
        **_stop_details(gen),
        "usage": usage(gen),
    }


def render_stream(gen: Generation) -> StreamPlan:
    """message_start, ping, content blocks (text, tool_use), message_delta, message_stop."""

    def ev(kind: str, **fields: Any) -> Event:
        return (kind, {"type": kind, **fields})

    message: dict[str, Any] = {
        "id": new_id("msg_01", 22),
        "type": "message",
        "role": "assistant",
        "model": gen.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage(gen, output_tokens=min(1, gen.output_tokens)),
    }
    preamble = [ev("message_start", message=message)]
    opened: list[Event] = []  # the first block's start, which goes into the preamble before the ping
    deltas: list[list[Event]] = []
    index = 0
    if gen.text_pieces:
        opened.append(ev("content_block_start", index=index, content_block={"type": "text", "text": ""}))
        deltas += [
            [ev("content_block_delta", index=index, delta={"type": "text_delta", "text": p})] for p in gen.text_pieces
        ]
        deltas[-1].append(ev("content_block_stop", index=index))
        index += 1
    for tool in gen.tools:
        block = {"type": "tool_use", "id": new_id("toolu_01", 22), "name": tool.name, "input": {}}
        start = [ev("content_block_start", index=index, content_block=block)]
        empty = ev("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": ""})
        for number, fragment in enumerate(tool.fragments):
            delta = ev("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": fragment})
            if number > 0:
                deltas.append([delta])
            elif index == 0:
                opened += start
                deltas.append([empty, delta])
            else:
                deltas.append([*start, empty, delta])
        deltas[-1].append(ev("content_block_stop", index=index))
        index += 1
    preamble += [*opened, ev("ping")]

    final_usage = usage(gen)
    final_usage.pop("cache_creation")
    final_usage.pop("service_tier")
    terminal = [
        ev(
            "message_delta",
            delta={"stop_reason": stop_reason(gen), "stop_sequence": None, **_stop_details(gen)},
            usage=final_usage,
        ),
        ev("message_stop"),
    ]

    def error(_written: int) -> list[Event]:
        kind = gen.scenario.stream_error_type or "overloaded_error"
        message = gen.scenario.error_message or _STREAM_MESSAGES.get(kind, "An error occurred while streaming.")
        return [("error", {"type": "error", "error": {"type": kind, "message": message}})]

    return StreamPlan(preamble=preamble, deltas=deltas, terminal=terminal, error=error)
