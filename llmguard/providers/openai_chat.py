"""OpenAI Chat Completions (`…/chat/completions`), also spoken by Azure OpenAI and OpenAI-compatible servers."""

from __future__ import annotations

import json
from typing import Any

from llmguard.errors import error_type_for_stream_error
from llmguard.providers.base import RequestInfo, deployment, int_or_none
from llmguard.record import CallRecord, FinishReason, ToolCallSeen, Usage
from llmguard.sse import SSEEvent

FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_call",
    "function_call": "tool_call",
    "content_filter": "content_filter",
}


def read_usage(record: CallRecord, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    prompt = int_or_none(usage.get("prompt_tokens")) or 0
    completion = int_or_none(usage.get("completion_tokens")) or 0
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    cache_read = int_or_none(prompt_details.get("cached_tokens")) or 0
    cache_write = int_or_none(prompt_details.get("cache_write_tokens")) or 0
    reasoning = int_or_none(completion_details.get("reasoning_tokens")) or 0
    # prompt_tokens includes cached and cache-write tokens; completion_tokens includes reasoning.
    record.usage = Usage(
        input=max(prompt - cache_read - cache_write, 0),
        cache_read=cache_read,
        cache_write=cache_write,
        output=completion,
        reasoning=reasoning,
    )
    record.usage_known = True


def _plain_content(data: str) -> bool:
    """A chunk in OpenAI's own compact form that carries only non-empty text. JSON escapes every quote inside a
    string, so these markers can only be structure; any other shape (spaces, tools, usage, an error) is decoded."""
    return (
        '"delta":{"content":"' in data
        and '"delta":{"content":""' not in data
        and '"finish_reason":null' in data
        and '"tool_calls"' not in data
        and '"usage":{' not in data
        and data.count('"delta"') == 1
    )


class ChatParser:
    __slots__ = ("_record", "_tools")

    def __init__(self, record: CallRecord) -> None:
        self._record = record
        self._tools: dict[tuple[int, int], ToolCallSeen] = {}

    def event(self, event: SSEEvent) -> bool:
        data = event.data
        if data.startswith("[DONE]"):
            self._record.terminal = True
            return False
        if _plain_content(data) and self._record.response_model is not None:
            return True  # the bulk of a stream: a text delta and nothing else, no need to decode it
        obj = json.loads(data)
        if not isinstance(obj, dict):
            return False
        if isinstance(obj.get("error"), dict):
            error = obj["error"]
            code = error.get("code") or error.get("type")
            self._record.set_error(error_type_for_stream_error(code, error.get("message")), code)
            self._record.terminal = True
            return False
        record = self._record
        if record.response_model is None and isinstance(obj.get("model"), str):
            record.response_model = obj["model"]
        if obj.get("usage"):
            read_usage(record, obj["usage"])
        content = False
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("function_call"):
                content = True
            if delta.get("refusal"):
                content = record.refused = True
            for call in delta.get("tool_calls") or ():
                content = True
                key = (choice.get("index", 0), call.get("index", 0))
                function = call.get("function") or {}
                seen = self._tools.get(key)
                if seen is None:
                    seen = self._tools[key] = ToolCallSeen(function.get("name") or "", "")
                    record.tool_calls.append(seen)
                elif function.get("name") and not seen.name:
                    seen.name = function["name"]
                seen.arguments += function.get("arguments") or ""
            reason = choice.get("finish_reason")
            if reason:
                record.finish_reason = FINISH_REASONS.get(reason, "unknown")
        return content

    def body(self, obj: Any) -> None:
        record = self._record
        record.terminal = True
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("model"), str):
            record.response_model = obj["model"]
        read_usage(record, obj.get("usage"))
        for choice in obj.get("choices") or ():
            message = choice.get("message") or {}
            record.refused = record.refused or bool(message.get("refusal"))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                record.tool_calls.append(ToolCallSeen(function.get("name") or "", function.get("arguments") or ""))
            reason = choice.get("finish_reason")
            if reason:
                record.finish_reason = FINISH_REASONS.get(reason, "unknown")


class OpenAIChatAdapter:
    api = "openai_chat"
    default_provider = "openai"

    def matches(self, path: str) -> bool:
        return path.endswith("/chat/completions")

    def read_request(self, path: str, body: Any) -> RequestInfo | None:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return None
        model = body.get("model") if isinstance(body.get("model"), str) else deployment(path)
        return RequestInfo.read(body, model or "unknown", body["messages"], "max_completion_tokens", "max_tokens")

    def parser(self, record: CallRecord) -> ChatParser:
        return ChatParser(record)
