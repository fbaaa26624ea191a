from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from starlette.types import Message

from llmguard.testing import Scenario, SimulatedProvider

BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        ("/v1/chat/completions", '"delta":{"content":"'),
        ("/v1/responses", '"type":"response.output_text.delta"'),
        ("/v1/messages", '"type":"text_delta"'),
    ],
)
async def test_stream_pacing(provider: SimulatedProvider, base_url: str, path: str, marker: str) -> None:
    provider.default = Scenario(text="one two three", first_token_delay=0.1, chunk_gap=0.04)
    arrivals: list[tuple[float, str]] = []
    async with httpx.AsyncClient() as client:
        start = time.monotonic()
        async with client.stream("POST", base_url + path, json=BODY) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    arrivals.append((time.monotonic() - start, line))
    preamble = arrivals[0][0]
    deltas = [t for t, line in arrivals if marker in line]
    assert len(deltas) == 3
    assert deltas[0] >= 0.099  # first_token_delay after the request arrived (which was after `start`)
    assert deltas[0] - preamble >= 0.05  # the preamble was written at once
    assert deltas[-1] >= 0.099 + 2 * 0.04  # deltas are chunk_gap apart
    assert deltas[-1] - deltas[0] >= 0.05
    assert arrivals[-1][0] - deltas[-1] < 0.05  # terminal events right after the last delta


async def test_non_streamed_answer_takes_the_whole_generation(provider: SimulatedProvider, base_url: str) -> None:
    provider.default = Scenario(text="a b c d", first_token_delay=0.06, chunk_gap=0.02)
    async with httpx.AsyncClient() as client:
        start = time.monotonic()
        response = await client.post(f"{base_url}/v1/chat/completions", json={**BODY, "stream": False})
        elapsed = time.monotonic() - start
    assert response.status_code == 200
    assert elapsed >= 0.06 + 3 * 0.02 - 0.001


async def test_client_disconnect_stops_the_stream_quietly() -> None:
    """Driven over plain ASGI: the handler must return soon after the client goes away."""
    provider = SimulatedProvider(default=Scenario(content_chunks=50, chunk_gap=0.1))
    sent: list[Message] = []
    disconnect = asyncio.Event()
    request = {"type": "http.request", "body": json.dumps(BODY).encode(), "more_body": False}
    requests = [request]

    async def receive() -> Message:
        if requests:
            return requests.pop()
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if b"text_delta" in message.get("body", b""):
            disconnect.set()

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/messages",
        "headers": [(b"content-type", b"application/json")],
    }
    start = time.monotonic()
    await asyncio.wait_for(provider(scope, receive, send), timeout=2)
    assert time.monotonic() - start < 0.5
    bodies = b"".join(m.get("body", b"") for m in sent)
    assert bodies.count(b"text_delta") == 1
    assert b"message_stop" not in bodies


async def test_lifespan_and_websocket_scopes() -> None:
    provider = SimulatedProvider()
    incoming = [{"type": "lifespan.shutdown"}, {"type": "lifespan.startup"}]
    replies: list[Message] = []

    async def receive() -> Message:
        return incoming.pop()

    async def send(message: Message) -> None:
        replies.append(message)

    await provider({"type": "lifespan"}, receive, send)
    assert [r["type"] for r in replies] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    await provider({"type": "websocket"}, receive, send)
    assert len(replies) == 2
