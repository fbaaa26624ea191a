"""OpenAI Responses API (`POST …/responses`)."""

from __future__ import annotations

import json
from typing import Any

from llmguard.errors import error_type_for_stream_error
from llmguard.providers.base import RequestInfo, deployment, int_or_none
from llmguard.record import CallRecord, ToolCallSeen, Usage
from llmguard.sse import SSEEvent

TOOL_ITEM_TYPES = frozenset({"function_call", "custom_tool_call"})
CONTENT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.audio.delta",
    }
)
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
INTERESTING = TERMINAL | {"response.output_item.done"}


def read_usage(record: CallRecord, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    total_input = int_or_none(usage.get("input_tokens")) or 0
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    cache_read = int_or_none(input_details.get("cached_tokens")) or 0
    cache_write = int_or_none(input_details.get("cache_write_tokens")) or 0
    record.usage = Usage(
        input=max(total_input - cache_read - cache_write, 0),
        cache_read=cache_read,
        cache_write=cache_write,
        output=int_or_none(usage.get("output_tokens")) or 0,
        reasoning=int_or_none(output_details.get("reasoning_tokens")) or 0,
    )
    record.usage_known = True


def read_response(record: CallRecord, response: Any, *, tools: bool) -> None:
    """A whole `response` object: the non-streamed body or the one a terminal event carries."""
    if not isinstance(response, dict):
        return
    record.terminal = True
    if isinstance(response.get("model"), str):
        record.response_model = response["model"]
    read_usage(record, response.get("usage"))
    output = response.get("output") or ()
    for item in output:
        if isinstance(item, dict) and item.get("type") == "message":
            parts = item.get("content") or ()
            record.refused = record.refused or any(isinstance(p, dict) and p.get("type") == "refusal" for p in parts)
    if tools:
        for item in output:
            if isinstance(item, dict) and item.get("type") in TOOL_ITEM_TYPES:
                record.tool_calls.append(ToolCallSeen(item.get("name") or "", item.get("arguments") or ""))
    status = response.get("status")
    if status == "failed":
        error = response.get("error") or {}
        code = error.get("code")
        record.set_error(error_type_for_stream_error(code, error.get("message")), code)
    elif status == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        record.finish_reason = "content_filter" if reason == "content_filter" else "length"
    elif status == "completed":
        has_tool = any(isinstance(item, dict) and item.get("type") in TOOL_ITEM_TYPES for item in output)
        record.finish_reason = "tool_call" if has_tool else "stop"


class ResponsesParser:
    __slots__ = ("_record",)

    def __init__(self, record: CallRecord) -> None:
        self._record = record

    def event(self, event: SSEEvent) -> bool:
        kind = event.event
        record = self._record
        if kind in CONTENT_DELTAS:
            record.refused = record.refused or kind == "response.refusal.delta"
            return True  # deltas are the bulk of a stream: no need to decode them
        if event.truncated:
            record.terminal = record.terminal or kind in TERMINAL
            return False
        obj: Any = None
        if kind == "message":  # a compatible server that sends only `data:` lines: the type is in the JSON
            obj = json.loads(event.data)
            kind = str(obj.get("type")) if isinstance(obj, dict) else ""
            if kind in CONTENT_DELTAS:
                record.refused = record.refused or kind == "response.refusal.delta"
                return True
        if kind not in INTERESTING:
            return False
        obj = json.loads(event.data) if obj is None else obj
        if kind == "response.output_item.done":
            item = obj.get("item") or {}
            if item.get("type") in TOOL_ITEM_TYPES:
                record.tool_calls.append(ToolCallSeen(item.get("name") or "", item.get("arguments") or ""))
        elif kind == "error":
            code = obj.get("code") or (obj.get("error") or {}).get("code")
            record.set_error(error_type_for_stream_error(code, obj.get("message")), code)
            record.terminal = True
        else:  # a terminal response; its tool calls were already counted from `output_item.done`
            read_response(record, obj.get("response"), tools=False)
        return False

    def body(self, obj: Any) -> None:
        read_response(self._record, obj, tools=True)


class OpenAIResponsesAdapter:
    api = "openai_responses"
    default_provider = "openai"

    def matches(self, path: str) -> bool:
        return path.endswith("/responses")

    def read_request(self, path: str, body: Any) -> RequestInfo | None:
        if not isinstance(body, dict) or not ("input" in body or "prompt" in body or "previous_response_id" in body):
            return None
        model = body.get("model") if isinstance(body.get("model"), str) else deployment(path)
        prompt = [body.get("instructions"), body.get("input")]
        return RequestInfo.read(body, model or "unknown", prompt, "max_output_tokens")

    def parser(self, record: CallRecord) -> ResponsesParser:
        return ResponsesParser(record)
