"""Anthropic Messages (`POST …/v1/messages`)."""

from __future__ import annotations

import json
from typing import Any

from llmguard.errors import error_type_for_stream_error
from llmguard.providers.base import RequestInfo, int_or_none
from llmguard.record import CallRecord, FinishReason, ToolCallSeen, Usage
from llmguard.sse import SSEEvent

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_call",
    "refusal": "content_filter",
}


_USAGE_FIELDS = (
    ("input", "input_tokens"),
    ("cache_read", "cache_read_input_tokens"),
    ("cache_write", "cache_creation_input_tokens"),
    ("output", "output_tokens"),
)


def merge_usage(usage: Usage, raw: Any) -> None:
    """Anthropic's `input_tokens` excludes cache reads and writes; every field, `output_tokens` included, is
    cumulative, so a later value replaces an earlier one rather than adding to it."""
    if not isinstance(raw, dict):
        return
    for field, key in _USAGE_FIELDS:
        value = int_or_none(raw.get(key))
        if value is not None:
            setattr(usage, field, value)
    thinking = int_or_none((raw.get("output_tokens_details") or {}).get("thinking_tokens"))
    if thinking is not None:
        usage.reasoning = thinking


class MessagesParser:
    __slots__ = ("_blocks", "_record")

    def __init__(self, record: CallRecord) -> None:
        self._record = record
        self._blocks: dict[int, ToolCallSeen] = {}

    def event(self, event: SSEEvent) -> bool:
        kind = event.event
        record = self._record
        if kind == "content_block_delta":
            if "input_json_delta" in event.data:  # only tool arguments are worth decoding
                obj = json.loads(event.data)
                delta = obj.get("delta") or {}
                if delta.get("type") == "input_json_delta":
                    seen = self._blocks.get(obj.get("index", 0))
                    if seen is not None:
                        seen.arguments += delta.get("partial_json") or ""
            return True
        if kind in ("ping", "content_block_stop"):
            return False
        obj = json.loads(event.data)
        if kind == "message_start":
            message = obj.get("message") or {}
            if isinstance(message.get("model"), str):
                record.response_model = message["model"]
            # Provisional (output_tokens is 1 or so): the usage is known only once `message_delta` reports it.
            merge_usage(record.usage, message.get("usage"))
        elif kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                seen = ToolCallSeen(block.get("name") or "", "")
                self._blocks[obj.get("index", 0)] = seen
                record.tool_calls.append(seen)
        elif kind == "message_delta":
            reason = (obj.get("delta") or {}).get("stop_reason")
            if reason:
                record.finish_reason = STOP_REASONS.get(reason, "unknown")
            merge_usage(record.usage, obj.get("usage"))
            record.usage_known = isinstance(obj.get("usage"), dict)
        elif kind == "message_stop":
            record.terminal = True
        elif kind == "error":
            error = obj.get("error") or {}
            code = error.get("type")
            record.set_error(error_type_for_stream_error(code, error.get("message")), code)
            record.terminal = True
        return False

    def body(self, obj: Any) -> None:
        record = self._record
        record.terminal = True
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("model"), str):
            record.response_model = obj["model"]
        if isinstance(obj.get("usage"), dict):
            merge_usage(record.usage, obj["usage"])
            record.usage_known = True
        for block in obj.get("content") or ():
            if isinstance(block, dict) and block.get("type") == "tool_use":
                arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
                record.tool_calls.append(ToolCallSeen(block.get("name") or "", arguments))
        reason = obj.get("stop_reason")
        if reason:
            record.finish_reason = STOP_REASONS.get(reason, "unknown")


class AnthropicAdapter:
    api = "anthropic_messages"
    default_provider = "anthropic"

    def matches(self, path: str) -> bool:
        return path.endswith("/v1/messages")

    def read_request(self, path: str, body: Any) -> RequestInfo | None:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return None
        model = body.get("model")
        model = model if isinstance(model, str) else "unknown"
        return RequestInfo.read(body, model, [body.get("system"), body["messages"]], "max_tokens")

    def parser(self, record: CallRecord) -> MessagesParser:
        return MessagesParser(record)
