"""The FastAPI and Litestar examples, end to end: real uvicorn, the official SDKs, the simulated provider.

Each example app is built with its own guard (a private registry), so every count below is exact.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from llmguard import Guard
from llmguard.testing import AGENT_ANSWER, AGENT_STEPS, Scenario, SimulatedProvider, serve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FRAMEWORKS = ("fastapi", "litestar")
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5"}

# Fixed usage per call, so token totals are exact: 50 input tokens of which 20 are cache reads, 7 output tokens.
SCENARIO = Scenario(text="one two three", input_tokens=50, cache_read_tokens=20, output_tokens=7)
UNCACHED, CACHED, OUTPUT = 30, 20, 7
AGENT_CALLS = AGENT_STEPS + 1  # one model call per tool step, then the answer


def load_example(framework: str) -> ModuleType:
    """Import `examples/<framework>_app/app.py` (the examples are scripts, not an installed package)."""
    name = f"llmguard_example_{framework}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{framework}_app" / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # pydantic resolves the request models' annotations through sys.modules
        spec.loader.exec_module(module)
    return module


@dataclass
class Example:
    url: str
    guard: Guard
    registry: CollectorRegistry
    sim: SimulatedProvider

    def value(self, name: str, **labels: str) -> float:
        """A sample's value, 0 when it does not exist (yet)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels`."""
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def sim_server() -> Iterator[tuple[SimulatedProvider, str]]:
    sim = SimulatedProvider(default=SCENARIO)
    with serve(sim) as url:
        yield sim, url


@pytest.fixture(
    params=[(framework, store) for framework in FRAMEWORKS for store in ("memory", "redis")],
    ids=lambda param: "-".join(param),
)
async def example(
    request: pytest.FixtureRequest, sim_server: tuple[SimulatedProvider, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Example]:
    framework, store = request.param
    sim, sim_url = sim_server
    sim.reset()
    for name in list(os.environ):
        if name.startswith("LLMGUARD_"):  # the defaults, whatever the environment says
            monkeypatch.delenv(name)
    # The apps build their SDK clients at start-up, with default arguments: the standard variables point them here.
    monkeypatch.setenv("OPENAI_BASE_URL", f"{sim_url}/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim_url)
    registry = CollectorRegistry()
    # The same app on the embedded store and on the real Redis server (a namespace of its own per test).
    redis = {"redis_url": REDIS_URL, "redis_prefix": f"llmguard-examples-{uuid.uuid4().hex[:12]}"}
    guard = Guard(registry=registry, **(redis if store == "redis" else {}))
    app = load_example(framework).create_app(guard)
    with serve(app) as url:
        yield Example(url, guard, registry, sim)
    await guard.aclose()  # the app closed its own connections at shutdown; these are the test's


async def chat(client: httpx.AsyncClient, session: str, provider: str, *, stream: bool = False) -> None:
    body = {"message": f"hello from {session}", "provider": provider, "stream": stream}
    headers = {"x-session-id": session}
    if not stream:
        response = await client.post("/chat", json=body, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"reply": SCENARIO.text, "model": MODELS[provider]}
        return
    async with aconnect_sse(client, "POST", "/chat", json=body, headers=headers) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        data = [event.data async for event in source.aiter_sse()]
    assert data[-1] == "[DONE]"
    deltas = [json.loads(item)["delta"] for item in data[:-1]]
    assert deltas == ["one", " two", " three"]  # one event per text delta


async def agent(client: httpx.AsyncClient, session: str, provider: str, model: str = "sim-agent") -> httpx.Response:
    body = {"task": f"a task of {session}", "provider": provider, "model": model}
    return await client.post("/agent", json=body, headers={"x-session-id": session})


async def run_agent(client: httpx.AsyncClient, session: str, provider: str) -> None:
    response = await agent(client, session, provider)
    assert response.status_code == 200, response.text
    assert response.json() == {"answer": AGENT_ANSWER, "steps": AGENT_CALLS}


def tokens(calls: int) -> dict[str, int]:
    return {"input": UNCACHED * calls, "cache_read": CACHED * calls, "cache_write": 0, "output": OUTPUT * calls,
            "reasoning": 0}  # fmt: skip


async def test_calls_are_attributed_to_their_session_and_feature(example: Example) -> None:
    async with httpx.AsyncClient(base_url=example.url, timeout=10) as client:

        async def alice() -> None:
            await chat(client, "alice", "openai")
            await chat(client, "alice", "anthropic", stream=True)
            await run_agent(client, "alice", "openai")

        async def bob() -> None:
            await chat(client, "bob", "openai", stream=True)
            await run_agent(client, "bob", "anthropic")
            await run_agent(client, "bob", "openai")
            await chat(client, "bob", "anthropic")

        await asyncio.gather(alice(), bob())  # concurrently: each call still lands in its own session
        scrape = await client.get("/metrics")

    guard = example.guard
    alice_state = await guard.get_session("alice")
    bob_state = await guard.get_session("bob")
    assert alice_state is not None and bob_state is not None
    alice_calls, bob_calls = 2 + AGENT_CALLS, 2 + 2 * AGENT_CALLS
    assert (alice_state.llm_calls, alice_state.tool_calls) == (alice_calls, AGENT_STEPS)
    assert (bob_state.llm_calls, bob_state.tool_calls) == (bob_calls, 2 * AGENT_STEPS)
    assert alice_state.tokens == tokens(alice_calls)
    assert bob_state.tokens == tokens(bob_calls)
    assert alice_state.blocked_reason is None and bob_state.blocked_reason is None
    assert len(example.sim.requests) == alice_calls + bob_calls

    calls = "llmguard_llm_calls_total"
    for provider, model in MODELS.items():
        chat_labels = {"provider": provider, "model": model, "feature": "/chat"}
        assert example.value(calls, **chat_labels, outcome="success", finish_reason="stop") == 2
        assert example.value("llmguard_time_to_first_token_seconds_count", **chat_labels) == 1  # the streamed one
    for provider, runs in (("openai", 2), ("anthropic", 1)):
        agent_labels = {"provider": provider, "model": "sim-agent", "feature": "/agent"}
        assert example.value(calls, **agent_labels, outcome="success", finish_reason="tool_call") == AGENT_STEPS * runs
        assert example.value(calls, **agent_labels, outcome="success", finish_reason="stop") == runs
        assert example.value("llmguard_tool_calls_total", **agent_labels) == AGENT_STEPS * runs
    assert example.total(calls, feature="/chat") == 4
    assert example.total(calls, feature="/agent") == 3 * AGENT_CALLS
    assert example.total(calls) == alice_calls + bob_calls  # nothing fell into feature="unknown"
    # One action-cost observation per inbound request.
    assert example.value("llmguard_action_cost_usd_count", feature="/chat") == 4
    assert example.value("llmguard_action_cost_usd_count", feature="/agent") == 3
    assert example.total("llmguard_tokens_total", feature="/chat", type="cache_read") == 4 * CACHED
    assert example.total("llmguard_tokens_total", type="output") == OUTPUT * (alice_calls + bob_calls)
    # The chat models are priced, the simulated agent model is not: sessions and the cost counter agree.
    cost = example.total("llmguard_cost_usd_total")
    assert cost > 0
    assert example.total("llmguard_cost_usd_total", feature="/agent") == 0
    assert alice_state.spent_usd + bob_state.spent_usd == pytest.approx(cost)
    assert example.total("llmguard_guard_blocks_total") == 0

    # The app's /metrics serves this guard's registry.
    assert scrape.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(scrape.text)}
    scraped = sum(s.value for s in families["llmguard_llm_calls"].samples if s.name == calls)
    assert scraped == alice_calls + bob_calls


async def test_looping_agent_is_stopped_with_429(example: Example) -> None:
    async with httpx.AsyncClient(base_url=example.url, timeout=10) as client:
        response = await agent(client, "runaway", "openai", model="sim-loop")
        assert response.status_code == 429
        assert response.headers["content-type"] == "application/problem+json"
        problem: dict[str, Any] = response.json()
        assert (problem["status"], problem["reason"], problem["session_id"]) == (429, "loop_detected", "runaway")

        # The loop threshold is 5: five identical tool calls reached the provider, the sixth call never left.
        runaway = [r for r in example.sim.requests if _task(r.json) == "a task of runaway"]
        assert len(runaway) == len(example.sim.requests) == 5
        state = await example.guard.get_session("runaway")
        assert state is not None
        assert (state.llm_calls, state.tool_calls, state.blocked_reason) == (5, 5, "loop_detected")
        assert example.value("llmguard_guard_blocks_total", feature="/agent", reason="loop_detected") == 1
        assert example.value("llmguard_loop_warnings_total", feature="/agent") == 1
        labels = {"provider": "openai", "model": "sim-loop", "feature": "/agent", "outcome": "success"}
        assert example.value("llmguard_llm_calls_total", **labels, finish_reason="tool_call") == 5

        # The blocked session is refused at the door; other sessions carry on.
        again = await client.post("/chat", json={"message": "hi"}, headers={"x-session-id": "runaway"})
        assert again.status_code == 429
        assert again.headers["content-type"] == "application/problem+json"
        assert again.json()["reason"] == "loop_detected"
        assert len(example.sim.requests) == 5
        await chat(client, "bystander", "openai")
        assert len(example.sim.requests) == 6
    assert example.total("llmguard_guard_blocks_total", reason="loop_detected") == 2


async def test_looping_anthropic_agent_is_stopped_at_once(example: Example) -> None:
    """The Anthropic SDK wraps foreign transport errors in a retried APIConnectionError: a block must still reach
    the middleware as itself, at once (no SDK retries, one block counted)."""
    async with httpx.AsyncClient(base_url=example.url, timeout=10) as client:
        response = await agent(client, "runaway-claude", "anthropic", model="sim-loop")
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["reason"] == "loop_detected"
    assert len(example.sim.requests) == 5
    assert example.value("llmguard_guard_blocks_total", feature="/agent", reason="loop_detected") == 1
    assert example.total("llmguard_llm_retries_total") == 0


def _task(body: dict[str, Any]) -> str | None:
    """The user's task in an OpenAI or Anthropic request body."""
    for message in body["messages"]:
        if message["role"] == "user" and isinstance(message["content"], str):
            return str(message["content"])
    return None
