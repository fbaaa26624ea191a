"""What the simulated model does for one request: `Scenario` and `ToolCall`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FINISH_REASONS", "Scenario", "ToolCall", "apply_overrides"]

FINISH_REASONS = ("stop", "length", "tool_call", "content_filter")
_LINE_ENDINGS = ("\n", "\r\n", "\r")
_DEFAULT_TEXT = "Hello from the simulated provider, naïve café 漢字 ✓"


@dataclass(frozen=True)
class ToolCall:
    """A function call the simulated model asks for."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def arguments_json(self) -> str:
        """The arguments as the JSON string the providers send."""
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True)
class Scenario:
    """The behaviour of the simulated model for one request.

    Counting rules:

    * The text is split into words (each with its leading whitespace) and spread over ``content_chunks`` deltas.
      Fewer chunks than words group the words; more chunks than words repeat the words (the text gets longer).
    * Every tool call adds one to three argument-fragment deltas. "Content deltas" are the text deltas plus the
      tool-argument fragments; ``chunk_gap`` separates any two of them and ``error_after_chunks`` counts them.
    * ``output_tokens=None`` means ``content deltas * tokens_per_chunk + reasoning_tokens`` (reasoning tokens are
      hidden and part of the output, as with every provider).
    * ``input_tokens`` is the total input including cache reads and writes; it is raised to at least
      ``cache_read_tokens + cache_write_tokens``.
    * When ``tool_calls`` is non-empty the finish reason is ``"tool_call"``; ``text`` is still sent first when it
      is non-empty (set ``text=""`` for a tool-only answer).
    """

    text: str = _DEFAULT_TEXT  # the answer; "" for none
    output_tokens: int | None = None  # None: content deltas * tokens_per_chunk + reasoning_tokens
    content_chunks: int | None = None  # text deltas; None: one per word
    tokens_per_chunk: int = 1  # output tokens counted per content delta
    first_token_delay: float = 0.0  # seconds from receipt to the first content-bearing event
    chunk_gap: float = 0.0  # seconds between content deltas
    input_tokens: int | None = None  # total input incl. cache; None: request body bytes // 4 (min 1)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0  # hidden, part of the output tokens
    finish_reason: str = "stop"  # "stop" | "length" | "tool_call" | "content_filter" (other values pass through)
    tool_calls: tuple[ToolCall, ...] = ()  # non-empty: the model calls these tools (finish reason "tool_call")
    error_status: int | None = None  # answer with this HTTP status and the provider's error body
    retry_after: float | None = None  # `retry-after` header (seconds) on error responses
    error_after_chunks: int | None = None  # streams: the provider's in-stream error after this many deltas
    line_ending: str = "\n"  # "\n", "\r\n" or "\r"
    slice_sizes: tuple[int, ...] = ()  # write the body in pieces of these sizes (cycled)
    stream_error_type: str | None = None  # in-stream error; None: server_error (OpenAI) / overloaded_error (Anthropic)
    error_message: str | None = None  # replaces the default message of HTTP and in-stream errors

    def __post_init__(self) -> None:
        # accept lists too, but store tuples so that scenarios stay immutable and hashable
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        object.__setattr__(self, "slice_sizes", tuple(self.slice_sizes))
        if self.line_ending not in _LINE_ENDINGS:
            raise ValueError(f"line_ending must be one of {_LINE_ENDINGS!r}, not {self.line_ending!r}")
        if any(size <= 0 for size in self.slice_sizes):
            raise ValueError("slice_sizes must all be positive")
        for name in ("output_tokens", "content_chunks", "input_tokens", "error_after_chunks"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("tokens_per_chunk", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.first_token_delay < 0 or self.chunk_gap < 0:
            raise ValueError("first_token_delay and chunk_gap must not be negative")
        if self.error_status is not None and not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be an HTTP error status (400-599)")

    @property
    def effective_finish_reason(self) -> str:
        """The provider-neutral finish reason: ``"tool_call"`` whenever tools are called."""
        return "tool_call" if self.tool_calls else self.finish_reason

    def replace(self, **changes: Any) -> Scenario:
        """A copy with some fields changed (like `dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name for f in dataclasses.fields(Scenario)}


def _tool_call(value: object) -> ToolCall:
    if isinstance(value, ToolCall):
        return value
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise ValueError('each tool call must be an object like {"name": "...", "arguments": {...}}')
    arguments = value.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise ValueError("tool call arguments must be a JSON object")
    return ToolCall(name=value["name"], arguments=dict(arguments))


def apply_overrides(base: Scenario, overrides: Mapping[str, Any]) -> Scenario:
    """Return ``base`` with the fields in ``overrides`` (JSON-like values) replaced.

    Raises `ValueError` for unknown fields or invalid values.
    """
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown Scenario field(s): {', '.join(unknown)}")
    changes = dict(overrides)
    if "tool_calls" in changes:
        calls = changes["tool_calls"]
        if not isinstance(calls, list | tuple):
            raise ValueError("tool_calls must be a list")
        changes["tool_calls"] = tuple(_tool_call(call) for call in calls)
    if "slice_sizes" in changes:
        sizes = changes["slice_sizes"]
        if not isinstance(sizes, list | tuple) or not all(isinstance(s, int) for s in sizes):
            raise ValueError("slice_sizes must be a list of integers")
        changes["slice_sizes"] = tuple(sizes)
    try:
        return dataclasses.replace(base, **changes)
    except TypeError as exc:  # a value of the wrong type, caught by __post_init__'s checks
        raise ValueError(f"invalid Scenario value: {exc}") from exc
