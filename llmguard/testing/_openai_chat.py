"""OpenAI Chat Completions wire format (``POST …/chat/completions``)."""

from __future__ import annotations

import time
from typing import Any

from ._generation import Event, Generation, StreamPlan, new_id
from ._openai_common import obfuscation, stream_error_message

__all__ = ["render_json", "render_stream", "usage"]

_FINISH = {"stop": "stop", "length": "length", "tool_call": "tool_calls", "content_filter": "content_filter"}
_FINGERPRINT = "fp_sim0000001"


def finish_reason(gen: Generation) -> str:
    return _FINISH.get(gen.finish_reason, gen.finish_reason)


def usage(gen: Generation) -> dict[str, Any]:
    prompt_details: dict[str, int] = {"cached_tokens": gen.cache_read, "audio_tokens": 0}
    if gen.cache_write:
        prompt_details["cache_write_tokens"] = gen.cache_write
    return {
        "prompt_tokens": gen.input_tokens,
        "completion_tokens": gen.output_tokens,
        "total_tokens": gen.input_tokens + gen.output_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": gen.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def render_json(gen: Generation) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` object."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": gen.text or None,
        "refusal": None,
        "annotations": [],
    }
    if gen.tools:
        message["tool_calls"] = [
            {"id": new_id("call_"), "type": "function", "function": {"name": t.name, "arguments": t.arguments_json}}
            for t in gen.tools
        ]
    return {
        "id": new_id("chatcmpl-", 29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": gen.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(gen)}],
        "usage": usage(gen),
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }


def _include_usage(gen: Generation) -> bool:
    options = gen.body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def render_stream(gen: Generation) -> StreamPlan:
    """``chat.completion.chunk`` events: role chunk, content/tool deltas, finish chunk, usage chunk, ``[DONE]``."""
    head = {
        "id": new_id("chatcmpl-", 29),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": gen.model,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }
    with_usage = _include_usage(gen)

    def chunk(delta: dict[str, Any], finish: str | None = None, padded: bool = False) -> Event:
        data: dict[str, Any] = {
            **head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            data["usage"] = None
        if padded:
            data.update(obfuscation(gen))
        return (None, data)

    content = "" if gen.text_pieces or not gen.tools else None  # tool-only answers start with a null content
    role: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    deltas: list[list[Event]] = [[chunk({"content": piece}, padded=True)] for piece in gen.text_pieces]
    for index, tool in enumerate(gen.tools):
        function = {"name": tool.name, "arguments": ""}
        opening = {"index": index, "id": new_id("call_"), "type": "function", "function": function}
        for number, fragment in enumerate(tool.fragments):
            piece = chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}, padded=True)
            deltas.append([chunk({"tool_calls": [opening]}), piece] if number == 0 else [piece])

    terminal: list[Event] = [chunk({}, finish_reason(gen))]
    if with_usage:
        terminal.append((None, {**head, "choices": [], "usage": usage(gen)}))
    terminal.append((None, "[DONE]"))

    def error(_written: int) -> list[Event]:
        kind = gen.scenario.stream_error_type or "server_error"
        message = gen.scenario.error_message or stream_error_message(kind)
        return [(None, {"error": {"message": message, "type": kind, "param": None, "code": None}})]

    return StreamPlan(preamble=[chunk(role)], deltas=deltas, terminal=terminal, error=error)
