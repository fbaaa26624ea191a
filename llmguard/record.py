"""`CallRecord`: what llmguard learned about one outbound LLM call."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from llmguard.errors import ErrorType

Outcome = Literal["success", "error", "cancelled"]
FinishReason = Literal["stop", "length", "tool_call", "content_filter", "error", "unknown"]


@dataclass(slots=True)
class Usage:
    """Token usage in non-overlapping buckets; `reasoning` is the part of `output` spent on hidden reasoning."""

    input: int = 0  # uncached input
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0

    @property
    def total_input(self) -> int:
        return self.input + self.cache_read + self.cache_write

    @property
    def total(self) -> int:
        return self.total_input + self.output


@dataclass(slots=True)
class ToolCallSeen:
    name: str
    arguments: str  # raw JSON text as the model produced it

    def signature(self) -> str:
        """Tool name plus the canonical JSON of its arguments (sorted keys, no insignificant whitespace)."""
        try:
            args: Any = json.loads(self.arguments) if self.arguments else {}
        except ValueError:
            args = self.arguments
        return self.name + ":" + json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class CallRecord:
    call_id: str
    provider: str
    api: str
    model: str
    stream: bool
    started_at: float
    retry_count: int = 0
    sdk_retries: bool = False  # sent by an SDK that retries failed attempts itself (x-stainless-retry-count)
    max_output_tokens: int | None = None
    response_model: str | None = None
    status_code: int | None = None
    first_token_at: float | None = None
    last_event_at: float | None = None
    ended_at: float | None = None
    usage: Usage = field(default_factory=Usage)
    usage_known: bool = False
    finish_reason: FinishReason = "unknown"
    outcome: Outcome = "success"
    error_type: ErrorType | None = None
    error_code: str | None = None  # the raw provider code, for logs only (never a label)
    tool_calls: list[ToolCallSeen] = field(default_factory=list)
    parsed: bool = True
    sent: bool = True  # False when the request provably never reached the provider (it could not connect)
    should_retry: bool | None = None  # the provider's `x-should-retry` header, when it sent one
    content_events: int = 0
    refused: bool = False  # the model answered with a refusal (OpenAI `refusal`), a content-filter outcome
    terminal: bool = False  # the provider's end-of-response event (or a whole JSON body) was seen
    cost_usd: float | None = None
    request_digest: str | None = None  # sha256 of the request's messages, logged on content-filter outcomes

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at

    @property
    def time_to_first_token(self) -> float | None:
        if not self.stream or self.first_token_at is None:
            return None
        return self.first_token_at - self.started_at

    @property
    def output_tokens_per_second(self) -> float | None:
        if not self.stream or self.first_token_at is None or self.last_event_at is None or not self.usage_known:
            return None
        elapsed = self.last_event_at - self.first_token_at
        if elapsed <= 0 or self.usage.output <= 0:
            return None
        return self.usage.output / elapsed

    def set_error(self, error_type: ErrorType, code: str | None = None) -> None:
        self.outcome = "error"
        self.error_type = error_type
        self.error_code = code
        self.finish_reason = "error"
