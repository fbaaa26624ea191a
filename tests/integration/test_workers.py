"""The budget guard across processes: the FastAPI example under several uvicorn workers sharing Redis, a worker
killed mid-call, and the `llmguard` command reading what they stored."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmguard import Guard
from tests.e2e.helpers import price
from tests.servers import ROOT, example_app, provider_process

REDIS_URL = "redis://127.0.0.1:6379/0"
CONCURRENT_CALLS = 100


@pytest.fixture(scope="module")
def provider_url() -> Iterator[str]:
    with provider_process("--first-token-delay", "0.05", "--chunk-gap", "0.005") as url:
        yield url


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    return REDIS_URL if request.param == "redis" else str(request.getfixturevalue("redis_cluster_url"))


@pytest.fixture
async def inspector(redis_url: str) -> AsyncIterator[Guard]:
    """A guard in the test process, reading the same Redis namespace as the workers."""
    prefix = f"llmguard-workers-{uuid.uuid4().hex[:12]}"
    guard = Guard(redis_url=redis_url, redis_prefix=prefix, redis_cluster=redis_url != REDIS_URL,
                  redis_timeout_seconds=5.0)  # fmt: skip
    yield guard
    await guard.aclose()


def worker_env(inspector: Guard, **settings: object) -> dict[str, str]:
    assert inspector.settings.redis_url is not None
    env = {
        "LLMGUARD_REDIS_URL": inspector.settings.redis_url.get_secret_value(),
        "LLMGUARD_REDIS_CLUSTER": str(inspector.settings.redis_cluster).lower(),
        "LLMGUARD_REDIS_PREFIX": inspector.settings.redis_prefix,
        # Four workers and a hundred streams on a 2-core CI machine: a command may wait longer than 50 ms, and a
        # timed-out charge would (rightly) land in the per-process fallback instead of Redis.
        "LLMGUARD_REDIS_TIMEOUT_SECONDS": "2",
    }
    env.update({f"LLMGUARD_{name.upper()}": str(value) for name, value in settings.items()})
    return env


async def chat(client: httpx.AsyncClient, session: str, message: str) -> tuple[int, str]:
    body = {"message": message, "provider": "openai", "stream": True}
    async with client.stream("POST", "/chat", json=body, headers={"x-session-id": session}) as response:
        text = (await response.aread()).decode()
    return response.status_code, text


def provider_log(provider_url: str, message: str) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = httpx.get(f"{provider_url}/_sim/requests").json()
    return [r for r in requests if r["json"]["messages"][-1]["content"] == message]


def reported_cost(request: dict[str, Any]) -> float:
    usage = request["usage"]
    return price("openai", request["model"], input=usage["input"], output=usage["output"],
                 cache_read=usage["cache_read"], cache_write=usage["cache_write"])  # fmt: skip


async def test_concurrent_streams_in_one_session_never_overshoot_the_cap(
    provider_url: str, inspector: Guard, redis_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    # The cost of one call, measured through the same path, sets a cap that fits about ten of them.
    calibration = f"calibrate-{tag}"
    # The example sets no max_tokens for OpenAI; a default output cap near the real answer's length (9 tokens) keeps
    # each call's hold close to its cost, so about as many calls run at once as the cap fits.
    env = worker_env(inspector, default_max_output_tokens=12, session_ttl_seconds=600)
    with example_app(provider_url, env, workers=4) as (app_url, _):
        async with httpx.AsyncClient(base_url=app_url, timeout=60) as client:
            status, _ = await chat(client, calibration, f"hello {tag}")
            assert status == 200
            one_call = reported_cost(provider_log(provider_url, f"hello {tag}")[0])
            cap = round(10.5 * one_call, 12)

        env = worker_env(inspector, default_max_output_tokens=12, session_budget_usd=cap, session_ttl_seconds=600)
    with example_app(provider_url, env, workers=4) as (app_url, _):
        burst = f"burst-{tag}"
        limits = httpx.Limits(max_connections=CONCURRENT_CALLS)
        async with httpx.AsyncClient(base_url=app_url, timeout=60, limits=limits) as client:
            results = await asyncio.gather(*(chat(client, burst, f"burst {tag}") for _ in range(CONCURRENT_CALLS)))
            small = f"small-{tag}"
            for _ in range(3):
                await chat(client, small, f"small {tag}")

    admitted = [text for status, text in results if status == 200]
    refused = [json.loads(text) for status, text in results if status != 200]
    assert len(admitted) + len(refused) == CONCURRENT_CALLS
    assert all(text.rstrip().endswith("data: [DONE]") for text in admitted)
    assert {problem["reason"] for problem in refused} == {"session_budget"}
    assert 5 <= len(admitted) <= 10

    received = provider_log(provider_url, f"burst {tag}")
    assert len(received) == len(admitted)  # refused calls never reached the provider
    state = await inspector.get_session(burst)
    assert state is not None
    assert state.spent_usd <= cap
    assert abs(state.spent_usd - sum(reported_cost(r) for r in received)) <= 1e-9
    assert state.held_usd == 0 and state.llm_calls == len(admitted)

    # `llmguard sessions top` lists the sessions in spend order.
    top = subprocess.run(  # noqa: ASYNC221 - the test waits for the command on purpose
        [sys.executable, "-m", "llmguard.cli", "sessions", "top", "--json"],
        env={**os.environ, **env, "LLMGUARD_REDIS_TIMEOUT_SECONDS": "5"}, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    listed = [row["session_id"] for row in json.loads(top.stdout)]
    assert listed == [burst, f"small-{tag}", calibration]


async def test_hold_of_a_killed_worker_is_released_after_its_ttl(inspector: Guard, tmp_path: Path) -> None:
    session = f"killed-{uuid.uuid4().hex[:8]}"
    env = worker_env(inspector, hold_ttl_seconds=2)
    with provider_process("--first-token-delay", "30") as slow_provider:
        with example_app(slow_provider, env) as (app_url, worker):
            async with httpx.AsyncClient(base_url=app_url, timeout=60) as client:
                request = asyncio.create_task(chat(client, session, "never answered"))
                for _ in range(200):
                    if provider_log(slow_provider, "never answered"):
                        break
                    await asyncio.sleep(0.02)
                holding = await inspector.get_session(session)
                assert holding is not None and holding.held_usd > 0 and holding.spent_usd == 0

                worker.send_signal(signal.SIGKILL)
                worker.wait(timeout=10)
                with pytest.raises(httpx.HTTPError):
                    await request

    await asyncio.sleep(2.3)
    released = await inspector.get_session(session)
    assert released is not None and released.held_usd == 0 and released.spent_usd == 0
