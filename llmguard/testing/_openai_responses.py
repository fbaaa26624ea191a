"""OpenAI Responses wire format (``POST …/responses``)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ._generation import Event, Generation, StreamPlan, new_id
from ._openai_common import obfuscation, stream_error_message

__all__ = ["render_json", "render_stream", "usage"]

# neutral finish reason -> incomplete_details.reason (absent: the response completes)
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _incomplete_reason(gen: Generation) -> str | None:
    if gen.finish_reason in ("stop", "tool_call"):
        return None
    return _INCOMPLETE.get(gen.finish_reason, gen.finish_reason)


def usage(gen: Generation) -> dict[str, Any]:
    return {
        "input_tokens": gen.input_tokens,
        "input_tokens_details": {"cached_tokens": gen.cache_read, "cache_write_tokens": gen.cache_write},
        "output_tokens": gen.output_tokens,
        "output_tokens_details": {"reasoning_tokens": gen.reasoning},
        "total_tokens": gen.input_tokens + gen.output_tokens,
    }


@dataclass
class _Items:
    """The output items of one answer (a message, then function calls), with their final shapes."""

    gen: Generation
    message_id: str = field(default_factory=lambda: "msg_" + secrets.token_hex(24))
    calls: list[tuple[str, str]] = field(default_factory=list)  # (item id, call_id) per tool

    def __post_init__(self) -> None:
        self.calls = [("fc_" + secrets.token_hex(24), new_id("call_")) for _ in self.gen.tools]

    def part(self) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": self.gen.text}

    def message(self, done: bool) -> dict[str, Any]:
        status = "in_progress" if not done else "incomplete" if _incomplete_reason(self.gen) else "completed"
        content = [self.part()] if done else []
        return {"id": self.message_id, "type": "message", "status": status, "content": content, "role": "assistant"}

    def call(self, index: int, done: bool) -> dict[str, Any]:
        item_id, call_id = self.calls[index]
        tool = self.gen.tools[index]
        return {
            "id": item_id,
            "type": "function_call",
            "status": "completed" if done else "in_progress",
            "arguments": tool.arguments_json if done else "",
            "call_id": call_id,
            "name": tool.name,
        }

    def final(self) -> list[dict[str, Any]]:
        message = [self.message(done=True)] if self.gen.text_pieces else []
        return message + [self.call(i, done=True) for i in range(len(self.gen.tools))]


def _response(gen: Generation, response_id: str, created: int, output: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The ``response`` object; ``output=None`` means still in progress."""
    body = gen.body
    reason = _incomplete_reason(gen)
    done = output is not None
    status = "in_progress" if not done else "incomplete" if reason else "completed"
    text = body.get("text")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if done and not reason else None,
        "error": None,
        "incomplete_details": {"reason": reason} if done and reason else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": gen.model,
        "output": output or [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_logprobs": 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage(gen) if done else None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def render_json(gen: Generation) -> dict[str, Any]:
    """The non-streamed ``response`` object."""
    items = _Items(gen)
    return _response(gen, "resp_" + secrets.token_hex(24), int(time.time()), items.final())


def render_stream(gen: Generation) -> StreamPlan:
    """Responses events: created, in_progress, item/part/delta/done events, then completed or incomplete."""
    items = _Items(gen)
    response_id, created = "resp_" + secrets.token_hex(24), int(time.time())
    counter = iter(range(1 << 62))

    def ev(kind: str, **fields: Any) -> Event:
        return (kind, {"type": kind, **fields, "sequence_number": next(counter)})

    preamble = [
        ev("response.created", response=_response(gen, response_id, created, None)),
        ev("response.in_progress", response=_response(gen, response_id, created, None)),
    ]
    deltas: list[list[Event]] = []
    output_index = 0
    if gen.text_pieces:
        where = {"item_id": items.message_id, "output_index": output_index}
        preamble.append(ev("response.output_item.added", output_index=output_index, item=items.message(False)))
        empty_part = {**items.part(), "text": ""}
        preamble.append(ev("response.content_part.added", **where, content_index=0, part=empty_part))
        for piece in gen.text_pieces:
            pad = obfuscation(gen)
            deltas.append([ev("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[], **pad)])
        deltas[-1] += [
            ev("response.output_text.done", **where, content_index=0, text=gen.text, logprobs=[]),
            ev("response.content_part.done", **where, content_index=0, part=items.part()),
            ev("response.output_item.done", output_index=output_index, item=items.message(True)),
        ]
        output_index += 1
    for index, tool in enumerate(gen.tools):
        where = {"item_id": items.calls[index][0], "output_index": output_index}
        added = ev("response.output_item.added", output_index=output_index, item=items.call(index, False))
        if output_index == 0:
            preamble.append(added)
        for number, fragment in enumerate(tool.fragments):
            delta = ev("response.function_call_arguments.delta", **where, delta=fragment, **obfuscation(gen))
            deltas.append([added, delta] if number == 0 and output_index > 0 else [delta])
        deltas[-1] += [
            ev("response.function_call_arguments.done", **where, arguments=tool.arguments_json),
            ev("response.output_item.done", output_index=output_index, item=items.call(index, True)),
        ]
        output_index += 1
    final = _response(gen, response_id, created, items.final())
    terminal = [ev(f"response.{final['status']}", response=final)]

    def error(written: int) -> list[Event]:
        kind = gen.scenario.stream_error_type or "server_error"
        message = gen.scenario.error_message or stream_error_message(kind)
        data = {"type": "error", "code": kind, "message": message, "param": None, "sequence_number": written}
        return [("error", data)]

    return StreamPlan(preamble=preamble, deltas=deltas, terminal=terminal, error=error)
