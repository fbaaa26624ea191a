"""`/metrics` under several uvicorn workers with `PROMETHEUS_MULTIPROC_DIR`: every scrape, whichever worker answers
it, merges the samples of every worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import example_app, provider_process

CALLS = "llmguard_llm_calls_total"
BATCH = 8
MAX_BATCHES = 10
SCRAPES = 8


@pytest.fixture(scope="module")
def provider_url() -> Iterator[str]:
    # Each call takes a little while, so concurrent calls are spread over both workers' accept loops.
    with provider_process("--first-token-delay", "0.05") as url:
        yield url


def calls_per_worker(folder: Path) -> dict[str, float]:
    """What each worker process wrote to its own counter file, read file by file (no cross-process merge)."""
    counts: dict[str, float] = {}
    for path in sorted(folder.glob("counter_*.db")):
        pid = path.stem.removeprefix("counter_")
        counts[pid] = sum(
            sample.value
            for metric in multiprocess.MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
            for sample in metric.samples
            if sample.name == CALLS
        )
    return counts


def scraped_calls(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == CALLS
    )


async def chat(url: str, number: int) -> None:
    # A client (and so a connection) of its own per call: the kernel hands each connection to either worker.
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        body = {"message": f"hello {number}", "provider": "openai"}
        response = await client.post("/chat", json=body, headers={"x-session-id": f"mp-{number}"})
    assert response.status_code == 200, response.text


async def test_scrapes_merge_every_workers_calls(provider_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    with example_app(provider_url, env, workers=2) as (url, _):
        made = 0
        for _ in range(MAX_BATCHES):
            await asyncio.gather(*(chat(url, made + i) for i in range(BATCH)))
            made += BATCH
            per_worker = calls_per_worker(folder)
            if sum(1 for count in per_worker.values() if count > 0) >= 2:
                break
        # Both workers made some of the calls: no single worker's own samples add up to all of them.
        assert sum(per_worker.values()) == made
        assert sum(1 for count in per_worker.values() if count > 0) >= 2, per_worker
        assert max(per_worker.values()) < made

        totals = []
        for _ in range(SCRAPES):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:  # a new connection each time
                scrape = await client.get("/metrics")
            assert scrape.status_code == 200
            totals.append(scraped_calls(scrape.text))
    assert totals == [made] * SCRAPES
