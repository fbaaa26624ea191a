"""Answering one provider request: errors, JSON bodies and paced SSE streams."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import _anthropic, _openai_chat, _openai_common, _openai_responses
from ._channel import Channel
from ._generation import Event, Generation, StreamPlan, encode_events
from ._scenario import Scenario

__all__ = ["ANTHROPIC", "OPENAI_CHAT", "OPENAI_RESPONSES", "ApiSpec", "respond", "send_error"]


@dataclass(frozen=True)
class ApiSpec:
    """One wire format: its renderers, error body, request ids and headers."""

    name: str
    content_type: str
    render_json: Callable[[Generation], dict[str, Any]]
    render_stream: Callable[[Generation], StreamPlan]
    error_body: Callable[[int, str | None, str], dict[str, Any]]
    new_request_id: Callable[[], str]
    headers: Callable[[str, int, int, int], dict[str, str]]


OPENAI_CHAT = ApiSpec(
    "openai_chat",
    _openai_common.CONTENT_TYPE_SSE,
    _openai_chat.render_json,
    _openai_chat.render_stream,
    _openai_common.error_body,
    _openai_common.new_request_id,
    _openai_common.response_headers,
)
OPENAI_RESPONSES = ApiSpec(
    "openai_responses",
    _openai_common.CONTENT_TYPE_SSE,
    _openai_responses.render_json,
    _openai_responses.render_stream,
    _openai_common.error_body,
    _openai_common.new_request_id,
    _openai_common.response_headers,
)
ANTHROPIC = ApiSpec(
    "anthropic",
    _anthropic.CONTENT_TYPE_SSE,
    _anthropic.render_json,
    _anthropic.render_stream,
    _anthropic.error_body,
    _anthropic.new_request_id,
    _anthropic.response_headers,
)


def _elapsed_ms(received_at: float) -> int:
    return int((time.monotonic() - received_at) * 1000)


async def send_error(
    channel: Channel,
    api: ApiSpec,
    status: int,
    message: str | None,
    request_id: str,
    received_at: float,
    *,
    input_tokens: int = 0,
    retry_after: float | None = None,
) -> None:
    """An HTTP error with the provider's exact JSON body (and ``retry-after`` when given)."""
    headers = api.headers(request_id, input_tokens, _elapsed_ms(received_at), status)
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    await channel.send_json(status, headers, api.error_body(status, message, request_id))


async def respond(
    channel: Channel,
    api: ApiSpec,
    scenario: Scenario,
    body: Mapping[str, Any],
    body_size: int,
    request_id: str,
    received_at: float,
) -> None:
    """Answer a parsed request according to ``scenario``."""
    gen = Generation.build(scenario, str(body.get("model", "")), body, body_size)
    if scenario.error_status is not None:
        await send_error(
            channel,
            api,
            scenario.error_status,
            scenario.error_message,
            request_id,
            received_at,
            input_tokens=gen.input_tokens,
            retry_after=scenario.retry_after,
        )
        return
    if body.get("stream") is True:
        await _stream(channel, api, gen, request_id, received_at)
        return
    deltas = gen.delta_count
    done_at = received_at + scenario.first_token_delay + scenario.chunk_gap * max(0, deltas - 1)
    if await channel.sleep_until(done_at):
        headers = api.headers(request_id, gen.input_tokens, _elapsed_ms(received_at), 200)
        await channel.send_json(200, headers, api.render_json(gen))


async def _stream(channel: Channel, api: ApiSpec, gen: Generation, request_id: str, received_at: float) -> None:
    scenario = gen.scenario
    plan = api.render_stream(gen)
    headers = api.headers(request_id, gen.input_tokens, _elapsed_ms(received_at), 200)
    headers.update({"content-type": api.content_type, "cache-control": "no-cache"})

    async def emit(events: list[Event]) -> bool:
        """Write the events now, each in its own body message."""
        for event in events:
            if not await channel.write(encode_events([event], scenario.line_ending)):
                return False
        return True

    if not await channel.start(200, headers) or not await emit(plan.preamble):
        return
    written = len(plan.preamble)
    first_at = received_at + scenario.first_token_delay
    stop_after = scenario.error_after_chunks
    for index, events in enumerate(plan.deltas):
        if not await channel.sleep_until(first_at + index * scenario.chunk_gap):
            return
        if stop_after is not None and index >= stop_after:
            break
        if not await emit(events):
            return
        written += len(events)
    else:
        if not plan.deltas and not await channel.sleep_until(first_at):
            return
    tail = plan.error(written) if stop_after is not None else plan.terminal
    if await emit(tail):
        await channel.finish()
