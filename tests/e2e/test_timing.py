"""Time to first token and decode rate, as llmguard records them, against the simulated provider's pacing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

from llmguard import Guard
from llmguard.testing import SCENARIO_HEADER
from tests.servers import provider_process

FIRST_TOKEN_DELAY = 0.25
CHUNK_GAP = 0.01  # one token per chunk: 100 tokens/s
CHUNKS = 41


@pytest.fixture(scope="module")
def paced_provider() -> Iterator[str]:
    # A process of its own, so the provider's pacing never waits on this process's GIL.
    with provider_process() as url:
        yield url


@pytest.fixture
async def clients(
    guard: Guard, paced_provider: str
) -> AsyncIterator[tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]]:
    scenario = {"first_token_delay": FIRST_TOKEN_DELAY, "chunk_gap": CHUNK_GAP, "content_chunks": CHUNKS}
    headers = {SCENARIO_HEADER: json.dumps(scenario)}
    url = paced_provider
    oai = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="t", http_client=guard.async_client(), default_headers=headers
    )
    claude = anthropic.AsyncAnthropic(
        base_url=url, api_key="t", http_client=guard.async_client(), default_headers=headers
    )
    yield oai, claude
    await oai.close()
    await claude.close()


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
async def test_ttft_and_decode_rate_match_the_provider(
    guard: Guard,
    registry: CollectorRegistry,
    clients: tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic],
    api: str,
) -> None:
    oai, claude = clients
    messages = [{"role": "user", "content": "count"}]
    async with guard.session("s-timing", feature="timing"):
        if api == "chat":
            stream = await oai.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},  # type: ignore[arg-type]
            )
            _ = [chunk async for chunk in stream]
        elif api == "responses":
            events = await oai.responses.create(model="gpt-4o-mini", input="count", stream=True)
            _ = [event async for event in events]
        else:
            events = await claude.messages.create(
                model="claude-sonnet-4-5", max_tokens=99, messages=messages, stream=True
            )  # type: ignore[arg-type]
            _ = [event async for event in events]

    ttft = _only(registry, "llmguard_time_to_first_token_seconds_sum")
    rate = _only(registry, "llmguard_output_tokens_per_second_sum")
    assert abs(ttft - FIRST_TOKEN_DELAY) <= 0.020, ttft
    assert rate == pytest.approx(1 / CHUNK_GAP, rel=0.10), rate


def _only(registry: CollectorRegistry, name: str) -> float:
    samples = [s for family in registry.collect() for s in family.samples if s.name == name]
    assert len(samples) == 1, samples
    return samples[0].value
