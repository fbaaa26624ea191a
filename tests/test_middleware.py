"""LLMGuardMiddleware in a real Starlette app under uvicorn: sessions, features, /metrics, hostile ids."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from llmguard import Guard, LLMGuardMiddleware
from llmguard.testing import Scenario, SimulatedProvider, serve
from llmguard.types import Message
from tests.apps import llm_lifespan
from tests.e2e.helpers import price, total, value

MODEL = "gpt-4o-mini"


def build_app(guard: Guard, provider_url: str) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        llm = request.app.state.llm
        reply = await llm.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        return JSONResponse({"reply": reply.choices[0].message.content})

    async def stream(request: Request) -> StreamingResponse:
        llm = request.app.state.llm

        async def events() -> AsyncIterator[bytes]:
            chunks = await llm.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield f"data: {chunk.choices[0].delta.content}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [Route("/chat/{kind}", chat, methods=["POST"]), Route("/stream", stream, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=llm_lifespan(guard, provider_url))
    app.add_middleware(LLMGuardMiddleware, guard=guard)
    return app


@pytest.fixture
def app_url(guard: Guard, provider: SimulatedProvider, provider_url: str) -> AsyncIterator[str]:
    provider.default = Scenario(input_tokens=100, content_chunks=10)
    with serve(build_app(guard, provider_url)) as url:
        yield url


async def test_calls_are_attributed_to_session_and_route_template(
    guard: Guard, registry: CollectorRegistry, app_url: str
) -> None:
    async with httpx.AsyncClient(base_url=app_url) as client:
        first = await client.post("/chat/a", headers={"x-session-id": "alice"})
        await client.post("/chat/b", headers={"x-session-id": "alice"})
        await client.post("/stream", headers={"x-session-id": "bob"})
        anonymous = await client.post("/chat/c")
    cost = price("openai", MODEL, input=100, output=10)
    assert first.headers["x-llmguard-session-cost-usd"] == f"{cost:.6f}"
    assert "x-llmguard-session-cost-usd" not in anonymous.headers
    labels = {"provider": "openai", "model": MODEL}
    calls = "llmguard_llm_calls_total"
    assert value(registry, calls, **labels, feature="/chat/{kind}", outcome="success", finish_reason="stop") == 3
    assert value(registry, calls, **labels, feature="/stream", outcome="success", finish_reason="stop") == 1
    alice, bob = await guard.get_session("alice"), await guard.get_session("bob")
    assert alice is not None and alice.llm_calls == 2 and alice.spent_usd == pytest.approx(2 * cost)
    assert bob is not None and bob.llm_calls == 1
    # One observation of the per-request cost for every request that made a call.
    assert value(registry, "llmguard_action_cost_usd_count", feature="/chat/{kind}") == 3
    assert value(registry, "llmguard_action_cost_usd_sum", feature="/chat/{kind}") == pytest.approx(3 * cost)


async def test_metrics_endpoint(guard: Guard, app_url: str) -> None:
    async with httpx.AsyncClient(base_url=app_url) as client:
        await client.post("/chat/a", headers={"x-session-id": "carol"})
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'llmguard_llm_calls_total{feature="/chat/{kind}"' in response.text
    assert "llmguard_active_sessions 1.0" in response.text


async def test_metrics_path_can_be_disabled(registry: CollectorRegistry, provider_url: str) -> None:
    guard = Guard(registry=registry, metrics_path="")
    with serve(build_app(guard, provider_url)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/metrics")
    assert response.status_code == 404


async def test_ten_kilobyte_session_id_over_http(guard: Guard, registry: CollectorRegistry, app_url: str) -> None:
    session_id = "s" * 10_240
    async with httpx.AsyncClient(base_url=app_url) as client:
        response = await client.post("/chat/a", headers={"x-session-id": session_id})
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200
    assert "sss" not in metrics
    state = await guard.get_session(session_id)
    assert state is not None and state.llm_calls == 1 and len(state.session_id) < 100


@pytest.mark.parametrize("session_id", [b"evil\x00\x1b[31m\r\nx-injected: 1", b"\xff\xfe{tag}:x", b"   "])
async def test_hostile_session_ids_never_break_the_request(
    guard: Guard, registry: CollectorRegistry, provider_url: str, session_id: bytes
) -> None:
    # Control characters cannot cross a real HTTP hop, so the ASGI app is driven directly with the raw header.
    app = build_app(guard, provider_url)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/chat/a", "raw_path": b"/chat/a", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"app"), (b"x-session-id", session_id)], "server": ("app", 80), "client": ("c", 1),
    }  # fmt: skip
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert all(b"injected" not in key for key, _ in sent[0]["headers"])
    labels = " ".join(str(sample.labels) for family in registry.collect() for sample in family.samples)
    assert "evil" not in labels and "tag" not in labels
    assert total(registry, "llmguard_llm_calls_total") == 1


async def test_inbound_client_disconnect_finalises_the_call_once(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, app_url: str
) -> None:
    provider.default = Scenario(content_chunks=200, chunk_gap=0.01)
    async with httpx.AsyncClient(base_url=app_url) as client:
        async with client.stream("POST", "/stream", headers={"x-session-id": "dave"}) as response:
            async for _line in response.aiter_lines():
                break  # the browser tab closes
    calls = "llmguard_llm_calls_total"
    for _ in range(200):  # the server notices the disconnect on its own schedule
        if total(registry, calls):
            break
        await asyncio.sleep(0.01)
    labels = {"provider": "openai", "model": MODEL, "feature": "/stream"}
    assert value(registry, calls, **labels, outcome="cancelled", finish_reason="unknown") == 1
    await asyncio.sleep(0.1)
    assert total(registry, calls) == 1
    state = await guard.get_session("dave")
    assert state is not None and state.llm_calls == 1 and state.held_usd == 0


async def test_content_filter_logs_request_digest_not_text(
    guard: Guard,
    registry: CollectorRegistry,
    provider: SimulatedProvider,
    app_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider.default = Scenario(finish_reason="content_filter")
    with caplog.at_level(logging.WARNING, logger="llmguard"):
        async with httpx.AsyncClient(base_url=app_url) as client:
            await client.post("/chat/a", headers={"x-session-id": "erin"})
    messages = [{"role": "user", "content": "hi"}]
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    records = [r.getMessage() for r in caplog.records if "content filter" in r.getMessage()]
    assert len(records) == 1 and digest in records[0] and "hi" not in records[0].replace(digest, "")
    labels = {"provider": "openai", "model": MODEL, "feature": "/chat/{kind}"}
    assert value(registry, "llmguard_llm_calls_total", **labels, outcome="success", finish_reason="content_filter") == 1
