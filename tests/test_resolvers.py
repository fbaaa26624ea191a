"""Resolvers and settings: where a request's session, feature and limits come from, and how `Guard(...)` merges
its settings object, keyword overrides and `LLMGUARD_*` environment variables."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llmguard import BudgetExceeded, Guard, GuardSettings, LLMGuardMiddleware, SessionLimits
from llmguard.testing import Scenario, SimulatedProvider, serve
from llmguard.types import Scope
from tests.apps import llm_lifespan
from tests.e2e.helpers import price, total, value

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "hi"}]
CALLS = "llmguard_llm_calls_total"
LABELS = {"provider": "openai", "model": MODEL}
SUCCESS = {"outcome": "success", "finish_reason": "stop"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LLMGUARD_"):  # the defaults, whatever the environment says
            monkeypatch.delenv(name)


def build_app(guard: Guard, provider_url: str) -> Starlette:
    """`POST /t/{tenant}/chat` makes one LLM call; `POST /t/{tenant}/nothing` makes none."""

    async def chat(request: Request) -> JSONResponse:
        reply = await request.app.state.llm.chat.completions.create(model=MODEL, messages=MESSAGES)
        return JSONResponse({"reply": reply.choices[0].message.content})

    app = Starlette(
        routes=[Route("/t/{tenant}/chat", chat, methods=["POST"])], lifespan=llm_lifespan(guard, provider_url)
    )
    app.add_middleware(LLMGuardMiddleware, guard=guard)
    return app


def session_from_query(scope: Scope) -> str | None:
    values = parse_qs(scope["query_string"].decode()).get("sid")
    return values[0] if values else None


def tenant(scope: Scope) -> str:
    """The tenant from the raw path: the resolvers run before routing, so no path params exist yet."""
    return str(scope["path"].split("/")[2])


def feature_from_tenant(scope: Scope) -> str:
    return f"chat-{tenant(scope)}"


def limits_by_tenant(scope: Scope) -> SessionLimits | None:
    return SessionLimits(max_llm_calls=1) if tenant(scope) == "free" else None


@pytest.fixture
def scenario(provider: SimulatedProvider) -> Scenario:
    provider.default = Scenario(input_tokens=100, content_chunks=5)
    return provider.default


@pytest.fixture
def resolved_app(registry: CollectorRegistry, provider_url: str, scenario: Scenario) -> Iterator[tuple[str, Guard]]:
    guard = Guard(
        registry=registry,
        session_resolver=session_from_query,
        feature_resolver=feature_from_tenant,
        limits_resolver=limits_by_tenant,
    )
    with serve(build_app(guard, provider_url)) as url:
        yield url, guard


async def test_resolvers_choose_session_feature_and_per_tenant_limits(
    resolved_app: tuple[str, Guard], registry: CollectorRegistry, provider: SimulatedProvider
) -> None:
    url, guard = resolved_app
    async with httpx.AsyncClient(base_url=url) as client:
        # The header is ignored: a session resolver, when set, is the only source of session ids.
        free_first = await client.post("/t/free/chat?sid=s-free", headers={"x-session-id": "from-header"})
        free_second = await client.post("/t/free/chat?sid=s-free")
        pro = [await client.post("/t/pro/chat?sid=s-pro") for _ in range(3)]

    cost = price("openai", MODEL, input=100, output=5)
    assert free_first.status_code == 200
    assert free_first.headers["x-llmguard-session-cost-usd"] == f"{cost:.6f}"
    assert free_second.status_code == 429
    assert free_second.headers["content-type"] == "application/problem+json"
    problem = free_second.json()
    assert (problem["status"], problem["reason"], problem["session_id"]) == (429, "session_llm_calls", "s-free")
    assert [response.status_code for response in pro] == [200, 200, 200]  # the other tenant is unlimited
    assert pro[2].headers["x-llmguard-session-cost-usd"] == f"{3 * cost:.6f}"
    assert len(provider.requests) == 4  # the refused call never reached the provider

    assert await guard.get_session("from-header") is None
    free_state, pro_state = await guard.get_session("s-free"), await guard.get_session("s-pro")
    assert free_state is not None and free_state.llm_calls == 1 and free_state.spent_usd == pytest.approx(cost)
    assert pro_state is not None and pro_state.llm_calls == 3 and pro_state.spent_usd == pytest.approx(3 * cost)
    assert value(registry, CALLS, **LABELS, feature="chat-free", **SUCCESS) == 1
    assert value(registry, CALLS, **LABELS, feature="chat-pro", **SUCCESS) == 3
    assert total(registry, CALLS) == 4
    assert value(registry, "llmguard_guard_blocks_total", feature="chat-free", reason="session_llm_calls") == 1
    assert total(registry, "llmguard_guard_blocks_total") == 1
    assert value(registry, "llmguard_action_cost_usd_count", feature="chat-pro") == 3


async def test_request_without_resolved_session_is_metered_without_session_state(
    resolved_app: tuple[str, Guard], registry: CollectorRegistry
) -> None:
    url, guard = resolved_app
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/t/pro/chat", headers={"x-session-id": "from-header"})
    assert response.status_code == 200
    assert "x-llmguard-session-cost-usd" not in response.headers
    assert response.headers["x-llmguard-action-cost-usd"] == f"{price('openai', MODEL, input=100, output=5):.6f}"
    assert await guard.get_session("from-header") is None
    assert value(registry, CALLS, **LABELS, feature="chat-pro", **SUCCESS) == 1


async def test_feature_header_and_its_precedence(
    registry: CollectorRegistry, provider_url: str, scenario: Scenario
) -> None:
    def only_for_admins(scope: Scope) -> str | None:
        return "admin-console" if tenant(scope) == "admin" else None  # None: fall through to the header

    guard = Guard(registry=registry, feature_header="X-Feature", feature_resolver=only_for_admins)
    with serve(build_app(guard, provider_url)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            for path, headers in (
                ("/t/acme/chat", {"x-feature": "summarise"}),
                ("/t/acme/chat", {"x-feature": "summarise"}),
                ("/t/admin/chat", {"x-feature": "summarise"}),  # the resolver's answer wins over the header
                ("/t/acme/chat", {}),  # neither: the route template
                ("/t/acme/chat", {"x-feature": ""}),  # an empty header is no answer either
            ):
                response = await client.post(path, headers={"x-session-id": "s-feature", **headers})
                assert response.status_code == 200
    assert value(registry, CALLS, **LABELS, feature="summarise", **SUCCESS) == 2
    assert value(registry, CALLS, **LABELS, feature="admin-console", **SUCCESS) == 1
    assert value(registry, CALLS, **LABELS, feature="/t/{tenant}/chat", **SUCCESS) == 2
    assert total(registry, CALLS) == 5


async def test_failing_resolvers_fall_back_and_log_a_warning(
    registry: CollectorRegistry, provider_url: str, scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_session(scope: Scope) -> str | None:
        raise RuntimeError("session lookup exploded")

    def broken_feature(scope: Scope) -> str | None:
        raise KeyError("feature lookup exploded")

    def broken_limits(scope: Scope) -> SessionLimits | None:
        raise ValueError("limits lookup exploded")

    guard = Guard(
        registry=registry,
        session_resolver=broken_session,
        feature_resolver=broken_feature,
        limits_resolver=broken_limits,
    )
    with caplog.at_level(logging.WARNING, logger="llmguard"):
        with serve(build_app(guard, provider_url)) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                response = await client.post("/t/acme/chat", headers={"x-session-id": "would-be-session"})
    assert response.status_code == 200, response.text
    assert response.json()["reply"] == scenario.text
    # No session: the request is metered under the route template, and no per-session state exists.
    assert "x-llmguard-session-cost-usd" not in response.headers
    assert "x-llmguard-action-cost-usd" in response.headers
    assert await guard.get_session("would-be-session") is None
    assert value(registry, CALLS, **LABELS, feature="/t/{tenant}/chat", **SUCCESS) == 1
    assert total(registry, CALLS) == 1

    warnings = [r.getMessage() for r in caplog.records if r.name == "llmguard" and r.levelno == logging.WARNING]
    for text in ("session lookup exploded", "feature lookup exploded", "limits lookup exploded"):
        assert sum(text in message for message in warnings) == 1, (text, warnings)


# -- Guard(settings, **overrides) and the environment --


async def test_keyword_overrides_win_over_the_settings_object(
    registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    settings = GuardSettings(session_max_llm_calls=5, session_budget_usd=3.0, session_header="x-from-settings")
    guard = Guard(settings, registry=registry, session_max_llm_calls=1, default_max_output_tokens=16)
    try:
        assert guard.settings.session_max_llm_calls == 1
        assert guard.settings.default_max_output_tokens == 16
        assert guard.settings.session_budget_usd == 3.0  # not overridden: the settings object's value
        assert guard.settings.session_header == "x-from-settings"
        assert settings.session_max_llm_calls == 5  # the caller's object is left alone
        # And the override is what the guard enforces.
        body = {"model": MODEL, "messages": MESSAGES}
        async with guard.async_client() as client, guard.session("kw"):
            first = await client.post(f"{provider_url}/v1/chat/completions", json=body)
            assert first.status_code == 200
            with pytest.raises(BudgetExceeded) as blocked:
                await client.post(f"{provider_url}/v1/chat/completions", json=body)
        assert blocked.value.reason == "session_llm_calls"
        assert len(provider.requests) == 1
    finally:
        await guard.aclose()


async def test_environment_is_read_and_loses_to_keywords(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMGUARD_SESSION_MAX_TOKENS", "1234")
    monkeypatch.setenv("LLMGUARD_SESSION_HEADER", "x-env-session")
    monkeypatch.setenv("LLMGUARD_SESSION_BUDGET_USD", "5")
    monkeypatch.setenv("LLMGUARD_STORE_FAILURE", "closed")
    monkeypatch.setenv("LLMGUARD_PRICES", '{"my-model": {"input_mtok": 0.5, "output_mtok": 1.5}}')
    guard = Guard(registry=registry, session_budget_usd=2.0, store_failure="open")
    try:
        settings = guard.settings
        assert settings.session_max_tokens == 1234
        assert settings.session_header == "x-env-session"
        assert settings.session_budget_usd == 2.0
        assert settings.store_failure == "open"
        assert settings.prices["my-model"].input_mtok == 0.5
        assert settings.prices["my-model"].output_mtok == 1.5
    finally:
        await guard.aclose()

    # A settings object built from the environment keeps its values; keywords still win over them.
    with_object = Guard(GuardSettings(), registry=registry, session_max_tokens=99)
    try:
        assert with_object.settings.session_max_tokens == 99
        assert with_object.settings.session_header == "x-env-session"
        assert with_object.settings.session_budget_usd == 5.0
        assert with_object.settings.store_failure == "closed"
    finally:
        await with_object.aclose()


async def test_settings_object_with_a_secret_redis_url_survives_overrides(registry: CollectorRegistry) -> None:
    settings = GuardSettings(redis_url=SecretStr("redis://127.0.0.1:6379/0"), redis_prefix="from-settings")
    guard = Guard(settings, registry=registry, redis_prefix="llmguard-test-resolvers")
    try:
        assert guard.settings.redis_url is not None
        assert guard.settings.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
        assert guard.settings.redis_prefix == "llmguard-test-resolvers"
        assert await guard.get_session("nobody-here") is None  # the Redis store answers
        assert total(registry, "llmguard_store_errors_total") == 0
    finally:
        await guard.aclose()


@pytest.mark.parametrize("with_settings", [False, True])
def test_unknown_keyword_is_a_type_error(registry: CollectorRegistry, with_settings: bool) -> None:
    settings = GuardSettings() if with_settings else None
    with pytest.raises(TypeError, match="sesion_budget_usd"):
        Guard(settings, registry=registry, sesion_budget_usd=1.0)
