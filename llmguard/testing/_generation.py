"""Provider-neutral content of one simulated answer, and the SSE plan the renderers build from it."""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._scenario import Scenario

__all__ = ["Event", "Generation", "StreamPlan", "ToolPlan", "encode_events", "new_id", "split_text"]

_WORD = re.compile(r"\s*\S+")
_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """A random identifier such as ``call_3J9f…``."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _spread(items: list[str], parts: int) -> list[str]:
    """Join consecutive items into ``parts`` groups whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    out: list[str] = []
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append("".join(items[start:end]))
        start = end
    return out


def split_text(text: str, chunks: int | None) -> list[str]:
    """Split ``text`` into content deltas: words with their leading whitespace (multibyte characters stay whole)."""
    if not text or chunks == 0:
        return []
    words: list[str] = _WORD.findall(text)
    tail = text[sum(len(w) for w in words) :]
    if not words:  # whitespace only
        return [text]
    words[-1] += tail
    if chunks is None or chunks == len(words):
        return words
    if chunks < len(words):
        return _spread(words, chunks)
    extra = [" " + words[i % len(words)].strip() for i in range(chunks - len(words))]
    return words + extra


def _fragments(arguments: str) -> list[str]:
    parts = 1 if len(arguments) <= 4 else 2 if len(arguments) <= 16 else 3
    chars = list(arguments)
    return _spread(chars, parts)


@dataclass(frozen=True)
class ToolPlan:
    name: str
    arguments: dict[str, Any]
    arguments_json: str
    fragments: list[str]


@dataclass(frozen=True)
class Generation:
    """Everything a renderer needs: model, content deltas, usage numbers and the neutral finish reason."""

    scenario: Scenario
    model: str
    body: Mapping[str, Any]
    text_pieces: list[str]
    tools: list[ToolPlan]
    input_tokens: int
    output_tokens: int
    finish_reason: str

    @classmethod
    def build(cls, scenario: Scenario, model: str, body: Mapping[str, Any], body_size: int) -> Generation:
        pieces = split_text(scenario.text, scenario.content_chunks)
        tools = [
            ToolPlan(call.name, call.arguments, call.arguments_json, _fragments(call.arguments_json))
            for call in scenario.tool_calls
        ]
        deltas = len(pieces) + sum(len(t.fragments) for t in tools)
        output = scenario.output_tokens
        if output is None:
            output = deltas * scenario.tokens_per_chunk + scenario.reasoning_tokens
        estimate = scenario.input_tokens if scenario.input_tokens is not None else max(1, body_size // 4)
        input_total = max(estimate, scenario.cache_read_tokens + scenario.cache_write_tokens)
        return cls(scenario, model, body, pieces, tools, input_total, output, scenario.effective_finish_reason)

    @property
    def text(self) -> str:
        return "".join(self.text_pieces)

    @property
    def delta_count(self) -> int:
        return len(self.text_pieces) + sum(len(t.fragments) for t in self.tools)

    @property
    def cache_read(self) -> int:
        return self.scenario.cache_read_tokens

    @property
    def cache_write(self) -> int:
        return self.scenario.cache_write_tokens

    @property
    def reasoning(self) -> int:
        return self.scenario.reasoning_tokens


# An SSE event: (event name or None, data). Dict data is JSON-encoded; str data is sent as is.
Event = tuple[str | None, "dict[str, Any] | str"]


@dataclass
class StreamPlan:
    """The events of one streamed answer, grouped by when they are written.

    ``preamble`` is written at once; ``deltas[i]`` (one content delta, possibly with item open/close events) at
    ``first_token_delay + i * chunk_gap``; ``terminal`` right after the last delta. ``error(n)`` gives the in-stream
    error event(s) that replace everything after the first ``n`` written events.
    """

    preamble: list[Event]
    deltas: list[list[Event]]
    terminal: list[Event]
    error: Callable[[int], list[Event]]


def encode_events(events: list[Event], line_ending: str = "\n") -> bytes:
    """Serialize events to SSE bytes with the given line ending."""
    lines: list[str] = []
    for name, data in events:
        if name is not None:
            lines.append(f"event: {name}")
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        lines.extend(f"data: {line}" for line in text.split("\n"))
        lines.append("")
    return "".join(line + line_ending for line in lines).encode("utf-8")
