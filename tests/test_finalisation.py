"""Every way a metered response can end finalises its call exactly once: read to the end, closed early (twice),
garbage-collected unread, cut by the provider, or cancelled with its task; async and sync clients alike.

Driven at the transport level (`guard.async_client()` / `guard.client()`), so every byte and close is the test's own.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from prometheus_client import CollectorRegistry

from llmguard import Guard
from llmguard.testing import Scenario, SimulatedProvider, serve
from llmguard.types import Receive, Scope, Send
from tests.e2e.helpers import price, total, value

MODEL = "gpt-4o-mini"
MAX_TOKENS = 50
LABELS = {"provider": "openai", "model": MODEL, "feature": "finalise"}
CALLS = "llmguard_llm_calls_total"
REDIS_URL = "redis://127.0.0.1:6379/0"


def body(*, stream: bool) -> bytes:
    payload: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": MAX_TOKENS,
    }
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(payload).encode()


def hold(request_body: bytes) -> float:
    """What llmguard reserves for the call: bytes / 3 input tokens, uncached, plus every output token allowed."""
    return price("openai", MODEL, input=math.ceil(len(request_body) / 3), output=MAX_TOKENS)


HEADERS = {"content-type": "application/json"}


# -- a provider that dies mid-stream --


class CutStreamProvider:
    """Answers every request with the start of a Chat Completions stream, then crashes: uvicorn drops the
    connection with the chunked body unfinished."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        chunk = {
            "id": "chatcmpl-cut",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}],
        }
        await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                    "more_body": True})  # fmt: skip
        await send({"type": "http.response.body", "body": b'data: {"id": "chatcmpl-cut", "obj', "more_body": True})
        await asyncio.sleep(0.02)
        raise RuntimeError("the simulated provider crashed mid-stream")


@pytest.fixture(scope="module")
def cut_url() -> Iterator[str]:
    with serve(CutStreamProvider()) as url:
        yield url


# -- guards --


@pytest.fixture(params=["memory", "redis"])
async def any_guard(request: pytest.FixtureRequest, registry: CollectorRegistry) -> AsyncIterator[Guard]:
    if request.param == "memory":
        guard = Guard(registry=registry)
    else:
        prefix = f"llmguard-finalisation-{uuid.uuid4().hex[:12]}"
        guard = Guard(registry=registry, redis_url=REDIS_URL, redis_prefix=prefix, redis_timeout_seconds=2.0)
    yield guard
    await guard.aclose()


@pytest.fixture(params=["memory", "redis"])
def sync_guard(request: pytest.FixtureRequest, registry: CollectorRegistry) -> Iterator[Guard]:
    if request.param == "memory":
        guard = Guard(registry=registry)
    else:
        prefix = f"llmguard-finalisation-{uuid.uuid4().hex[:12]}"
        guard = Guard(registry=registry, redis_url=REDIS_URL, redis_prefix=prefix, redis_timeout_seconds=2.0)
    yield guard
    guard.close()


def assert_once(registry: CollectorRegistry, outcome: str, finish_reason: str) -> None:
    assert value(registry, CALLS, **LABELS, outcome=outcome, finish_reason=finish_reason) == 1
    assert total(registry, CALLS) == 1


def assert_charged_the_hold(registry: CollectorRegistry, state: Any, request_body: bytes) -> None:
    """Usage never arrived: the session is charged the call's hold, nothing stays held, and the charge is exported
    as an estimate."""
    assert state is not None
    assert state.llm_calls == 1 and state.held_usd == 0
    assert state.spent_usd == pytest.approx(hold(request_body), rel=1e-9)
    assert value(registry, "llmguard_estimated_cost_usd_total", **LABELS) == pytest.approx(state.spent_usd, rel=1e-9)
    assert total(registry, "llmguard_tokens_total") == 0


# -- async --


@pytest.mark.parametrize("stream", [True, False])
async def test_unread_response_collected_by_gc_is_cancelled_once(
    any_guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str, stream: bool
) -> None:
    guard = any_guard
    request_body = body(stream=stream)
    async with guard.async_client() as client:
        async with guard.session("gc-async", feature="finalise"):
            request = client.build_request("POST", f"{provider_url}/v1/chat/completions", content=request_body,
                                           headers=HEADERS)  # fmt: skip
            response = await client.send(request, stream=True)
            assert response.status_code == 200
            assert total(registry, CALLS) == 0  # neither read nor closed: still in flight
            in_flight = await guard.get_session("gc-async")
            assert in_flight is not None and in_flight.held_usd == pytest.approx(hold(request_body), rel=1e-9)
            del response, request
            gc.collect()
            assert_once(registry, "cancelled", "unknown")
        gc.collect()
    assert_once(registry, "cancelled", "unknown")
    assert total(registry, "llmguard_errors_total") == 0
    assert_charged_the_hold(registry, await guard.get_session("gc-async"), request_body)
    assert len(provider.requests) == 1


async def test_unread_response_closed_then_collected_is_cancelled_once(
    guard: Guard, registry: CollectorRegistry, provider_url: str
) -> None:
    request_body = body(stream=True)
    async with guard.async_client() as client:
        async with guard.session("closed-unread", feature="finalise"):
            request = client.build_request("POST", f"{provider_url}/v1/chat/completions", content=request_body,
                                           headers=HEADERS)  # fmt: skip
            response = await client.send(request, stream=True)
            await response.aclose()
            await response.aclose()
            del response, request
            gc.collect()
    assert_once(registry, "cancelled", "unknown")
    assert_charged_the_hold(registry, await guard.get_session("closed-unread"), request_body)


async def test_stream_cut_by_the_provider_is_one_stream_interrupted_error(
    guard: Guard, registry: CollectorRegistry, cut_url: str
) -> None:
    request_body = body(stream=True)
    received: list[bytes] = []
    async with guard.async_client() as client:
        async with guard.session("cut-async", feature="finalise"):
            async with client.stream("POST", f"{cut_url}/v1/chat/completions", content=request_body,
                                     headers=HEADERS) as response:  # fmt: skip
                assert response.status_code == 200
                with pytest.raises(httpx2.RemoteProtocolError):
                    async for chunk in response.aiter_raw():
                        received.append(chunk)
                await response.aclose()
            gc.collect()
    assert b"".join(received).startswith(b'data: {"id": "chatcmpl-cut"')
    assert_once(registry, "error", "error")
    assert value(registry, "llmguard_errors_total", **LABELS, error_type="stream_interrupted") == 1
    assert total(registry, "llmguard_errors_total") == 1
    assert value(registry, "llmguard_llm_call_duration_seconds_count", **LABELS, stream="true") == 1
    assert_charged_the_hold(registry, await guard.get_session("cut-async"), request_body)


async def test_task_cancelled_while_reading_a_stream_is_cancelled_once(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    provider.default = Scenario(content_chunks=200, chunk_gap=0.01)
    request_body = body(stream=True)
    first_chunk = asyncio.Event()

    async def read(client: httpx2.AsyncClient) -> None:
        async with client.stream("POST", f"{provider_url}/v1/chat/completions", content=request_body,
                                 headers=HEADERS) as response:  # fmt: skip
            async for _chunk in response.aiter_bytes():
                first_chunk.set()

    async with guard.async_client() as client:
        async with guard.session("cancel-async", feature="finalise"):
            task = asyncio.create_task(read(client))
            await asyncio.wait_for(first_chunk.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gc.collect()
    assert_once(registry, "cancelled", "unknown")
    assert total(registry, "llmguard_errors_total") == 0
    assert_charged_the_hold(registry, await guard.get_session("cancel-async"), request_body)


async def test_task_cancelled_before_the_response_arrives_is_cancelled_once(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    provider.default = Scenario(first_token_delay=5.0)
    request_body = body(stream=False)
    async with guard.async_client() as client:
        async with guard.session("cancel-early", feature="finalise"):
            task = asyncio.create_task(
                client.post(f"{provider_url}/v1/chat/completions", content=request_body, headers=HEADERS)
            )
            for _ in range(500):  # until the provider has the request: it was sent, so it may cost
                if provider.requests:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert_once(registry, "cancelled", "unknown")
    assert total(registry, "llmguard_errors_total") == 0
    assert_charged_the_hold(registry, await guard.get_session("cancel-early"), request_body)


@pytest.mark.parametrize("stream", [True, False])
async def test_read_to_the_end_then_closed_again_counts_once(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str, stream: bool
) -> None:
    provider.default = Scenario(input_tokens=40, content_chunks=5)
    async with guard.async_client() as client:
        async with guard.session("twice-async", feature="finalise"):
            async with client.stream("POST", f"{provider_url}/v1/chat/completions", content=body(stream=stream),
                                     headers=HEADERS) as response:  # fmt: skip
                await response.aread()
                await response.aclose()
                await response.aclose()
            await response.aclose()
            del response
            gc.collect()
    assert_once(registry, "success", "stop")
    cost = price("openai", MODEL, input=40, output=5)
    assert value(registry, "llmguard_cost_usd_total", **LABELS) == pytest.approx(cost, rel=1e-12)
    assert value(registry, "llmguard_tokens_total", **LABELS, type="output") == 5
    assert value(registry, "llmguard_llm_call_duration_seconds_count", **LABELS, stream=str(stream).lower()) == 1
    assert total(registry, "llmguard_estimated_cost_usd_total") == 0
    state = await guard.get_session("twice-async")
    assert state is not None and state.llm_calls == 1 and state.held_usd == 0
    assert state.spent_usd == pytest.approx(cost, rel=1e-12)


# -- sync --


@pytest.mark.parametrize("stream", [True, False])
def test_sync_unread_response_collected_by_gc_is_cancelled_once(
    sync_guard: Guard, registry: CollectorRegistry, provider_url: str, stream: bool
) -> None:
    guard = sync_guard
    request_body = body(stream=stream)
    with guard.client() as client:
        with guard.session("gc-sync", feature="finalise"):
            request = client.build_request("POST", f"{provider_url}/v1/chat/completions", content=request_body,
                                           headers=HEADERS)  # fmt: skip
            response = client.send(request, stream=True)
            assert response.status_code == 200
            assert total(registry, CALLS) == 0
            del response, request
            gc.collect()
            assert_once(registry, "cancelled", "unknown")
        gc.collect()
    assert_once(registry, "cancelled", "unknown")
    assert_charged_the_hold(registry, guard.get_session_sync("gc-sync"), request_body)


def test_sync_stream_cut_by_the_provider_is_one_stream_interrupted_error(
    sync_guard: Guard, registry: CollectorRegistry, cut_url: str
) -> None:
    guard = sync_guard
    request_body = body(stream=True)
    with guard.client() as client:
        with guard.session("cut-sync", feature="finalise"):
            with client.stream("POST", f"{cut_url}/v1/chat/completions", content=request_body,
                               headers=HEADERS) as response:  # fmt: skip
                with pytest.raises(httpx2.RemoteProtocolError):
                    for _chunk in response.iter_raw():
                        pass
                response.close()
            gc.collect()
    assert_once(registry, "error", "error")
    assert value(registry, "llmguard_errors_total", **LABELS, error_type="stream_interrupted") == 1
    assert total(registry, "llmguard_errors_total") == 1
    assert_charged_the_hold(registry, guard.get_session_sync("cut-sync"), request_body)


@pytest.mark.parametrize("stream", [True, False])
def test_sync_read_to_the_end_then_closed_again_counts_once(
    sync_guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str, stream: bool
) -> None:
    guard = sync_guard
    provider.default = Scenario(input_tokens=40, content_chunks=5)
    with guard.client() as client:
        with guard.session("twice-sync", feature="finalise"):
            with client.stream("POST", f"{provider_url}/v1/chat/completions", content=body(stream=stream),
                               headers=HEADERS) as response:  # fmt: skip
                response.read()
                response.close()
                response.close()
            response.close()
            del response
            gc.collect()
    assert_once(registry, "success", "stop")
    cost = price("openai", MODEL, input=40, output=5)
    state = guard.get_session_sync("twice-sync")
    assert state is not None and state.llm_calls == 1 and state.held_usd == 0
    assert state.spent_usd == pytest.approx(cost, rel=1e-12)
    assert total(registry, "llmguard_estimated_cost_usd_total") == 0


def test_sync_stream_closed_midway_is_cancelled_once(
    sync_guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    guard = sync_guard
    provider.default = Scenario(content_chunks=100, chunk_gap=0.005)
    request_body = body(stream=True)
    with guard.client() as client:
        with guard.session("midway-sync", feature="finalise"):
            with client.stream("POST", f"{provider_url}/v1/chat/completions", content=request_body,
                               headers=HEADERS) as response:  # fmt: skip
                for _chunk in response.iter_bytes():
                    break
                response.close()
            gc.collect()
    assert_once(registry, "cancelled", "unknown")
    assert_charged_the_hold(registry, guard.get_session_sync("midway-sync"), request_body)
