"""Edge cases of the official SDKs, unchanged, against the simulated provider over real HTTP: errors the SDK yields
instead of raising, default retries, abandoned streams, and a cycling agent in the FastAPI example."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.responses import ResponseErrorEvent
from prometheus_client import CollectorRegistry

from llmguard import Guard
from llmguard.testing import Scenario, SimulatedProvider, serve
from llmguard.types import Message, Receive, Scope, Send
from tests.conftest import ProviderSwitch
from tests.e2e.helpers import price, total, value

OPENAI_MODEL = "gpt-4o-mini"
CLAUDE_MODEL = "claude-sonnet-4-5"
CALLS = "llmguard_llm_calls_total"
EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


@pytest.fixture
async def oai(guard: Guard, provider_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="test", http_client=guard.async_client())
    yield client
    await client.close()


@pytest.fixture
async def claude(guard: Guard, provider_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=provider_url, api_key="test", http_client=guard.async_client())
    yield client
    await client.close()


# -- (a) a Responses stream that fails mid-way: the SDK yields the error event --


async def test_responses_stream_error_event_is_one_failed_call(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, oai: openai.AsyncOpenAI
) -> None:
    provider.default = Scenario(content_chunks=10, error_after_chunks=2)
    labels = {"provider": "openai", "model": OPENAI_MODEL, "feature": "responses"}
    async with guard.session("s-responses-error", feature="responses"):
        events = await oai.responses.create(model=OPENAI_MODEL, input="Say hello", stream=True)
        received = [event async for event in events]  # no exception: the error arrives as an event
    errors = [event for event in received if isinstance(event, ResponseErrorEvent)]
    assert len(errors) == 1 and received[-1] is errors[0]
    assert errors[0].code == "server_error"
    assert sum(event.type == "response.output_text.delta" for event in received) == 2

    assert value(registry, CALLS, **labels, outcome="error", finish_reason="error") == 1
    assert total(registry, CALLS) == 1
    assert value(registry, "llmguard_errors_total", **labels, error_type="server_error") == 1
    assert total(registry, "llmguard_errors_total") == 1
    assert total(registry, "llmguard_tokens_total") == 0
    assert len(provider.requests) == 1  # an error inside a 200 stream is not retried
    state = await guard.get_session("s-responses-error")
    assert state is not None and state.llm_calls == 1 and state.held_usd == 0


# -- (b) Anthropic 429 with the SDK's default retries --


async def test_anthropic_rate_limit_with_default_retries_is_one_logical_call(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, claude: anthropic.AsyncAnthropic
) -> None:
    provider.default = Scenario(error_status=429, retry_after=0.001)
    labels = {"provider": "anthropic", "model": CLAUDE_MODEL, "feature": "assist"}
    async with guard.session("s-claude-429", feature="assist"):
        with pytest.raises(anthropic.RateLimitError):
            await claude.messages.create(
                model=CLAUDE_MODEL, max_tokens=64, messages=[{"role": "user", "content": "Say hello"}]
            )
    assert len(provider.requests) == 3  # the SDK's default max_retries=2
    assert [r.headers.get("x-stainless-retry-count") for r in provider.requests] == ["0", "1", "2"]
    assert value(registry, "llmguard_errors_total", **labels, error_type="rate_limit") == 3
    assert total(registry, "llmguard_errors_total") == 3
    assert value(registry, "llmguard_llm_retries_total", **labels) == 2
    assert value(registry, CALLS, **labels, outcome="error", finish_reason="error") == 1
    assert total(registry, CALLS) == 1
    state = await guard.get_session("s-claude-429")
    assert state is not None and state.llm_calls == 1 and state.spent_usd == 0 and state.held_usd == 0


# -- (c) an abandoned Anthropic stream is charged its hold --


class RequestBodies:
    """Records the exact bytes of every request body the provider receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self.bodies.append(b"".join(chunks))
            return message

        await self.app(scope, recording_receive, send)


async def test_abandoned_anthropic_stream_is_charged_exactly_its_hold(
    guard: Guard,
    registry: CollectorRegistry,
    provider: SimulatedProvider,
    provider_server: tuple[ProviderSwitch, str],
    claude: anthropic.AsyncAnthropic,
) -> None:
    switch, _ = provider_server
    recorder = RequestBodies(provider)
    switch.app = recorder  # type: ignore[assignment]
    provider.default = Scenario(content_chunks=50, chunk_gap=0.005)
    labels = {"provider": "anthropic", "model": CLAUDE_MODEL, "feature": "assist"}
    max_tokens = 64
    async with guard.session("s-claude-abandon", feature="assist"):
        async with claude.messages.stream(
            model=CLAUDE_MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": "Say hello"}]
        ) as stream:
            async for _text in stream.text_stream:
                break
    assert value(registry, CALLS, **labels, outcome="cancelled", finish_reason="unknown") == 1
    assert total(registry, CALLS) == 1
    assert total(registry, "llmguard_errors_total") == 0

    # Usage never arrived (message_start's is provisional): the session is charged the call's hold, which is the
    # request body's bytes / 3 as uncached input plus max_tokens of output, and nothing stays held.
    state = await guard.get_session("s-claude-abandon")
    assert state is not None and state.llm_calls == 1
    assert state.spent_usd > 0 and state.held_usd == 0
    assert len(recorder.bodies) == 1
    expected = price("anthropic", CLAUDE_MODEL, input=math.ceil(len(recorder.bodies[0]) / 3), output=max_tokens)
    assert state.spent_usd == pytest.approx(expected, rel=1e-9)
    # The charge is exported as an estimate; no tokens or reported cost are invented from the provisional usage.
    assert value(registry, "llmguard_estimated_cost_usd_total", **labels) == pytest.approx(state.spent_usd, rel=1e-9)
    assert total(registry, "llmguard_tokens_total") == 0
    assert total(registry, "llmguard_cost_usd_total") == 0


# -- (d) the FastAPI example stops an A→B→A→B agent --


def load_fastapi_example() -> ModuleType:
    """`examples/fastapi_app/app.py` (a script, not an installed package), under the name tests/test_examples.py
    uses, so the module is imported once per process."""
    name = "llmguard_example_fastapi"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / "fastapi_app" / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # pydantic resolves the request models' annotations through sys.modules
        spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["memory", "redis"])
async def fastapi_example(
    request: pytest.FixtureRequest, registry: CollectorRegistry, provider_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, Guard]]:
    for name in list(os.environ):
        if name.startswith("LLMGUARD_"):  # the defaults, whatever the environment says
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{provider_url}/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", provider_url)
    redis = {"redis_url": "redis://127.0.0.1:6379/0", "redis_prefix": f"llmguard-edge-{uuid.uuid4().hex[:12]}"}
    guard = Guard(registry=registry, **(redis if request.param == "redis" else {}))
    with serve(load_fastapi_example().create_app(guard)) as url:
        yield url, guard
    await guard.aclose()  # the app closed its own connections at shutdown; these are the test's


@pytest.mark.parametrize("llm", ["openai", "anthropic"])
async def test_cycling_agent_is_stopped_after_five_repeats_of_its_cycle(
    fastapi_example: tuple[str, Guard], registry: CollectorRegistry, provider: SimulatedProvider, llm: str
) -> None:
    url, guard = fastapi_example
    body = {"task": "cycle", "provider": llm, "model": "sim-cycle", "max_steps": 30}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post("/agent", json=body, headers={"x-session-id": f"cycler-{llm}"})
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["status"], problem["reason"], problem["session_id"]) == (429, "loop_detected", f"cycler-{llm}")

    # Five repeats of A→B: ten calls reached the provider, the eleventh never left.
    assert len(provider.requests) == 10
    state = await guard.get_session(f"cycler-{llm}")
    assert state is not None
    assert (state.llm_calls, state.tool_calls, state.blocked_reason) == (10, 10, "loop_detected")
    labels = {"provider": llm, "model": "sim-cycle", "feature": "/agent"}
    assert value(registry, CALLS, **labels, outcome="success", finish_reason="tool_call") == 10
    assert total(registry, CALLS) == 10
    assert value(registry, "llmguard_tool_calls_total", **labels) == 10
    assert value(registry, "llmguard_guard_blocks_total", feature="/agent", reason="loop_detected") == 1
    assert value(registry, "llmguard_loop_warnings_total", feature="/agent") == 1
    assert total(registry, "llmguard_llm_retries_total") == 0
