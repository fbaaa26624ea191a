"""How the middleware answers a blocked call: problem+json, an SSE error event, or a refusal at the door."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from llmguard import Guard, LLMGuardMiddleware
from llmguard.testing import Scenario, SimulatedProvider, serve
from tests.apps import llm_lifespan
from tests.e2e.helpers import value

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def build_app(guard: Guard, provider_url: str) -> tuple[Starlette, list[str]]:
    """An app whose /calls/{n} makes n LLM calls and whose /stream streams n replies one after another."""
    runs: list[str] = []

    async def calls(request: Request) -> JSONResponse:
        runs.append(request.url.path)
        for _ in range(int(request.path_params["n"])):
            await request.app.state.llm.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
        return JSONResponse({"ok": True})

    async def stream(request: Request) -> StreamingResponse:
        runs.append(request.url.path)
        llm = request.app.state.llm

        async def events() -> AsyncIterator[bytes]:
            for i in range(int(request.path_params["n"])):
                reply = await llm.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)
                yield f"data: {i} {reply.choices[0].finish_reason}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [Route("/calls/{n:int}", calls, methods=["POST"]), Route("/stream/{n:int}", stream, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=llm_lifespan(guard, provider_url))
    app.add_middleware(LLMGuardMiddleware, guard=guard)
    return app, runs


@pytest.fixture
def served(
    registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> AsyncIterator[tuple[str, list[str], Guard]]:
    provider.default = Scenario(output_tokens=10)
    guard = Guard(registry=registry, session_max_llm_calls=2, session_budget_usd=1.0)
    app, runs = build_app(guard, provider_url)
    with serve(app) as url:
        yield url, runs, guard


async def test_blocked_call_becomes_problem_json(
    served: tuple[str, list[str], Guard], provider: SimulatedProvider
) -> None:
    url, _, _ = served
    async with httpx.AsyncClient(base_url=url) as client:
        ok = await client.post("/calls/1", headers={"x-session-id": "p1"})
        blocked = await client.post("/calls/2", headers={"x-session-id": "p1"})
    assert ok.status_code == 200
    assert float(ok.headers["x-llmguard-session-cost-usd"]) > 0
    remaining = float(ok.headers["x-llmguard-budget-remaining-usd"])
    assert remaining == pytest.approx(1.0 - float(ok.headers["x-llmguard-session-cost-usd"]), abs=1e-6)
    assert blocked.status_code == 429
    assert blocked.headers["content-type"] == "application/problem+json"
    problem = blocked.json()
    assert problem["reason"] == "session_llm_calls" and problem["session_id"] == "p1"
    assert problem["limit_usd"] == 1.0 and problem["spent_usd"] > 0
    assert {"type", "title", "detail", "status"} <= problem.keys()
    assert len(provider.requests) == 2


async def test_cost_cap_answers_402(
    registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    guard = Guard(registry=registry, session_budget_usd=1e-9)
    app, _ = build_app(guard, provider_url)
    with serve(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post("/calls/1", headers={"x-session-id": "poor"})
    assert response.status_code == 402
    assert response.json()["reason"] == "session_budget" and response.json()["limit_usd"] == 1e-9
    assert len(provider.requests) == 0


async def test_block_after_an_sse_response_started_ends_it_with_an_error_event(
    served: tuple[str, list[str], Guard], provider: SimulatedProvider
) -> None:
    url, _, _ = served
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/stream/5", headers={"x-session-id": "sse"})
    assert response.status_code == 200
    events = response.text.split("\n\n")
    assert events[:2] == ["data: 0 stop", "data: 1 stop"]
    assert events[2].startswith("event: error\ndata: ")
    problem = json.loads(events[2].removeprefix("event: error\ndata: "))
    assert problem["reason"] == "session_llm_calls" and problem["session_id"] == "sse"
    assert len(provider.requests) == 2


async def test_blocked_session_is_refused_before_the_app_runs(
    served: tuple[str, list[str], Guard], registry: CollectorRegistry
) -> None:
    url, runs, _ = served
    async with httpx.AsyncClient(base_url=url) as client:
        await client.post("/calls/3", headers={"x-session-id": "door"})  # third call is refused: session blocked
        runs.clear()
        again = await client.post("/calls/1", headers={"x-session-id": "door"})
        other = await client.post("/calls/1", headers={"x-session-id": "someone-else"})
    assert again.status_code == 429 and again.json()["reason"] == "session_llm_calls"
    assert runs == ["/calls/1"]  # only the other session's request reached the app
    assert other.status_code == 200
    # Both blocks are labelled with the route, the refusal at the door (before routing) included.
    assert value(registry, "llmguard_guard_blocks_total", feature="/calls/{n:int}", reason="session_llm_calls") == 2
