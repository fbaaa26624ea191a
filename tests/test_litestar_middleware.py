"""LLMGuardMiddleware in a real Litestar app under uvicorn: plain `DefineMiddleware`, then `LLMGuardPlugin`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
from litestar import Litestar, Request, post
from litestar.middleware import DefineMiddleware
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from llmguard import Guard, LLMGuardMiddleware
from llmguard.litestar import LLMGuardPlugin
from llmguard.testing import Scenario, SimulatedProvider, serve
from tests.e2e.helpers import price, total, value

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "hi"}]
CALLS = "llmguard_llm_calls_total"
LABELS = {"provider": "openai", "model": MODEL}
SUCCESS = {"outcome": "success", "finish_reason": "stop"}


def build_app(guard: Guard, provider_url: str, *, plugin: bool) -> Litestar:
    """`POST /chat/{kind}` makes `?n=` LLM calls (one by default)."""
    state: dict[str, openai.AsyncOpenAI] = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with openai.AsyncOpenAI(
            base_url=f"{provider_url}/v1", api_key="t", http_client=guard.async_client()
        ) as llm:
            state["llm"] = llm
            yield

    @post("/chat/{kind:str}", status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> dict[str, Any]:
        kind = request.path_params["kind"]
        replies = []
        for _ in range(int(request.query_params.get("n", "1"))):
            reply = await state["llm"].chat.completions.create(model=MODEL, messages=MESSAGES)
            replies.append(reply.choices[0].message.content)
        return {"kind": kind, "replies": replies}

    if plugin:
        return Litestar(route_handlers=[chat], lifespan=[lifespan], plugins=[LLMGuardPlugin(guard)])
    # Litestar types ASGI scopes as TypedDicts; ours are the plain mappings Starlette uses.
    middleware = [DefineMiddleware(LLMGuardMiddleware, guard=guard)]  # type: ignore[arg-type]
    return Litestar(route_handlers=[chat], lifespan=[lifespan], middleware=middleware)


@pytest.fixture(autouse=True)
def scenario(provider: SimulatedProvider) -> Scenario:
    provider.default = Scenario(input_tokens=60, content_chunks=4)
    return provider.default


async def test_plain_middleware_meters_with_litestar_path_template_and_session_header(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str, scenario: Scenario
) -> None:
    with serve(build_app(guard, provider_url, plugin=False)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            first = await client.post("/chat/a", headers={"x-session-id": "lit-alice"})
            second = await client.post("/chat/b?n=2", headers={"x-session-id": "lit-alice"})
            anonymous = await client.post("/chat/c")
    assert [r.status_code for r in (first, second, anonymous)] == [200, 200, 200]
    assert first.json() == {"kind": "a", "replies": [scenario.text]}
    cost = price("openai", MODEL, input=60, output=4)
    assert first.headers["x-llmguard-session-cost-usd"] == f"{cost:.6f}"
    assert second.headers["x-llmguard-session-cost-usd"] == f"{3 * cost:.6f}"
    assert "x-llmguard-session-cost-usd" not in anonymous.headers
    assert anonymous.headers["x-llmguard-action-cost-usd"] == f"{cost:.6f}"

    # Litestar's path template (the converter stripped), never the raw path.
    assert value(registry, CALLS, **LABELS, feature="/chat/{kind}", **SUCCESS) == 4
    assert total(registry, CALLS) == 4
    assert value(registry, "llmguard_action_cost_usd_count", feature="/chat/{kind}") == 3
    assert value(registry, "llmguard_action_cost_usd_sum", feature="/chat/{kind}") == pytest.approx(4 * cost)
    state = await guard.get_session("lit-alice")
    assert state is not None and state.llm_calls == 3 and state.spent_usd == pytest.approx(3 * cost)
    assert state.held_usd == 0
    assert len(provider.requests) == 4


async def test_plugin_serves_metrics(guard: Guard, registry: CollectorRegistry, provider_url: str) -> None:
    with serve(build_app(guard, provider_url, plugin=True)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            called = await client.post("/chat/a", headers={"x-session-id": "lit-metrics"})
            scrape = await client.get("/metrics")
    assert called.status_code == 200
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(scrape.text)}
    samples = [s for s in families["llmguard_llm_calls"].samples if s.name == CALLS]
    assert [(s.labels, s.value) for s in samples] == [({**LABELS, "feature": "/chat/{kind}", **SUCCESS}, 1.0)]
    assert [s.value for s in families["llmguard_active_sessions"].samples] == [1.0]
    assert value(registry, CALLS, **LABELS, feature="/chat/{kind}", **SUCCESS) == 1


async def test_plugin_answers_a_call_cap_with_429_problem_json(
    registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    guard = Guard(registry=registry, session_max_llm_calls=2)
    try:
        with serve(build_app(guard, provider_url, plugin=True)) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                blocked = await client.post("/chat/a?n=3", headers={"x-session-id": "lit-calls"})
                at_the_door = await client.post("/chat/a", headers={"x-session-id": "lit-calls"})
    finally:
        await guard.aclose()
    assert blocked.status_code == 429
    assert blocked.headers["content-type"] == "application/problem+json"
    problem = blocked.json()
    assert (problem["status"], problem["reason"], problem["session_id"]) == (429, "session_llm_calls", "lit-calls")
    assert {"type", "title", "detail", "spent_usd", "limit_usd"} <= problem.keys()
    assert at_the_door.status_code == 429
    assert at_the_door.headers["content-type"] == "application/problem+json"
    assert at_the_door.json()["reason"] == "session_llm_calls"
    assert len(provider.requests) == 2  # the third call never left
    assert value(registry, "llmguard_guard_blocks_total", feature="/chat/{kind}", reason="session_llm_calls") == 2


async def test_plugin_answers_a_cost_cap_with_402_problem_json(
    registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    guard = Guard(registry=registry, session_budget_usd=1e-9)
    try:
        with serve(build_app(guard, provider_url, plugin=True)) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                response = await client.post("/chat/a", headers={"x-session-id": "lit-poor"})
    finally:
        await guard.aclose()
    assert response.status_code == 402
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["status"], problem["reason"], problem["limit_usd"]) == (402, "session_budget", 1e-9)
    assert problem["session_id"] == "lit-poor"
    assert len(provider.requests) == 0
    assert value(registry, "llmguard_guard_blocks_total", feature="/chat/{kind}", reason="session_budget") == 1
