"""llmguard in one command: a simulated LLM provider, the FastAPI example app, and traffic through both.

    python examples/demo.py                      # ~20 s of traffic, then a summary read back from /metrics
    python examples/demo.py --duration 60 --keep-running   # then curl the /metrics it prints; Ctrl-C to stop

Everything runs in this process on loopback: the simulated OpenAI / Anthropic API (`llmguard.testing`) and the
FastAPI example under uvicorn, each in a thread. Several users chat (streamed and not, both providers) and run
tool-using agents; one runaway agent (`sim-loop`) keeps asking for the same tool call until llmguard's loop guard
stops it with a 429. No API keys, no Redis: the in-memory store is the default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import math
import os
import random
import socket
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families

from llmguard.testing import BUILTIN_MODELS, Scenario, SimulatedProvider, serve

HERE = Path(__file__).resolve().parent
DEMO_KEY = "sk-llmguard-demo"
USERS = 6  # concurrent simulated users
ANSWER = "Sure! Here is a short, friendly answer from the simulated model, streamed word by word."
# The simulated agent models are not in genai-prices: give them a small model's price so agents cost something.
SIM_PRICES = {
    model: {"input_mtok": 0.4, "output_mtok": 1.6, "cache_read_mtok": 0.1, "cache_write_mtok": 0.5}
    for model in BUILTIN_MODELS
}


class DemoProvider(SimulatedProvider):
    """The simulated provider, with the spread of real traffic: ~0.3 s to the first token, ~20 ms between chunks,
    answers of varying length, and a prompt cache that hits most of the time."""

    def __init__(self, seed: int) -> None:
        super().__init__(default=Scenario(text=ANSWER, first_token_delay=0.3, chunk_gap=0.02, tokens_per_chunk=2))
        self._random = random.Random(seed)

    def scenario_for(self, model: str, api: str, body: Mapping[str, Any], overrides: str | None = None) -> Scenario:
        scenario = super().scenario_for(model, api, body, overrides)
        rng = self._random
        prompt = rng.randint(600, 2400)
        cached = int(prompt * rng.uniform(0.5, 0.9)) if rng.random() < 0.6 else 0
        written = int(prompt * 0.5) if not cached and rng.random() < 0.3 else 0
        changes: dict[str, Any] = {
            "first_token_delay": max(0.05, rng.gauss(0.3 if api != "anthropic" else 0.4, 0.08)),
            "chunk_gap": max(0.005, rng.gauss(0.02, 0.004)),
            "input_tokens": prompt,
            "cache_read_tokens": cached,
            "cache_write_tokens": written,
        }
        if model not in BUILTIN_MODELS:  # a chat answer: vary its length (agent steps keep their script)
            changes["content_chunks"] = rng.randint(12, 48)
        return scenario.replace(**changes)


# -- the traffic ----------------------------------------------------------------------------------------------------


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    statuses: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    sessions: int = 0
    runaways_stopped: int = 0
    unexpected: list[str] = field(default_factory=list)
    llm_calls: float = 0.0
    cost: float = 0.0


async def request(
    client: httpx.AsyncClient, stats: Stats, action: str, path: str, session: str, body: dict[str, Any]
) -> int:
    headers = {"x-session-id": session}
    stats.in_flight += 1
    stats.actions[action] += 1
    try:
        if body.get("stream"):
            async with aconnect_sse(client, "POST", path, json=body, headers=headers) as source:
                response = source.response
                if response.status_code == 200:  # a refused call answers with a problem document, not a stream
                    events = [event.data async for event in source.aiter_sse()]
                    if not events or events[-1] != "[DONE]":
                        stats.unexpected.append(f"{action}: the stream ended without [DONE]")
                else:
                    await response.aread()
        else:
            response = await client.post(path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        stats.unexpected.append(f"{action}: {exc!r}")
        return 0
    finally:
        stats.in_flight -= 1
    stats.statuses[str(response.status_code)] += 1
    if response.status_code >= 500:
        stats.unexpected.append(f"{action}: HTTP {response.status_code}")
    return response.status_code


async def user(client: httpx.AsyncClient, stats: Stats, number: int, deadline: float, rng: random.Random) -> None:
    """One user after another on this seat: each opens a session and does a few chats and agent runs."""
    visit = 0
    while time.monotonic() < deadline:
        visit += 1
        session = f"user-{number}-{visit}"
        stats.sessions += 1
        agent_runs = 0
        for _ in range(rng.randint(2, 5)):
            if time.monotonic() >= deadline:
                return
            provider = rng.choice(("openai", "anthropic"))
            kind = rng.choices(("chat", "stream", "agent"), weights=(3, 4, 3))[0]
            if kind == "agent" and agent_runs < 2:  # the same task a third time would look like a loop, rightly
                agent_runs += 1
                body: dict[str, Any] = {"task": "Find three facts and summarise them.", "provider": provider,
                                        "model": "sim-agent"}  # fmt: skip
                await request(client, stats, f"agent {provider}", "/agent", session, body)
            else:
                body = {"message": "Tell me something nice.", "provider": provider, "stream": kind == "stream"}
                await request(client, stats, f"{kind} {provider}", "/chat", session, body)
            await asyncio.sleep(rng.uniform(0.05, 0.4))  # the user reads the answer


async def runaways(client: httpx.AsyncClient, stats: Stats, deadline: float) -> None:
    """An agent stuck calling the same tool with the same arguments; the loop guard stops it (429)."""
    number = 0
    while True:
        number += 1
        stats.sessions += 1
        provider = ("openai", "anthropic")[number % 2 == 0]
        body = {"task": "Keep looking until you are sure.", "provider": provider, "model": "sim-loop", "max_steps": 20}
        status = await request(client, stats, f"agent runaway {provider}", "/agent", f"runaway-{number}", body)
        if status == 429:
            stats.runaways_stopped += 1
        else:
            stats.unexpected.append(f"the runaway agent got HTTP {status}, not 429")
        if deadline - time.monotonic() < 6:
            return
        await asyncio.sleep(4)


async def progress(client: httpx.AsyncClient, stats: Stats, live: bool) -> None:
    last_print = 0.0
    while True:
        with contextlib.suppress(httpx.HTTPError):
            metrics = Metrics((await client.get("/metrics")).text)
            stats.llm_calls = metrics.sum("llmguard_llm_calls_total")
            stats.cost = metrics.sum("llmguard_cost_usd_total")
        elapsed = time.monotonic() - stats.started
        done = sum(stats.statuses.values())
        blocked = sum(n for status, n in stats.statuses.items() if status in ("402", "429"))
        line = (
            f"{elapsed:5.1f}s  requests {done:4d} (in flight {stats.in_flight})  sessions {stats.sessions:3d}  "
            f"LLM calls {stats.llm_calls:5.0f}  spend ${stats.cost:.4f}  blocked {blocked}"
        )
        if live:
            print("\r" + line, end="", flush=True)
        elif elapsed - last_print >= 2:
            print(line, flush=True)
            last_print = elapsed
        await asyncio.sleep(0.25)


async def run_traffic(app_url: str, duration: float, seed: int) -> Stats:
    stats = Stats()
    deadline = stats.started + duration
    rng = random.Random(seed)
    live = sys.stdout.isatty()
    async with httpx.AsyncClient(base_url=app_url, timeout=60) as client:
        ticker = asyncio.create_task(progress(client, stats, live))
        try:
            seats = [user(client, stats, n, deadline, random.Random(rng.random())) for n in range(1, USERS + 1)]
            await asyncio.gather(runaways(client, stats, deadline), *seats)
            await asyncio.sleep(0.3)  # one last progress line with the final numbers
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    if live:
        print()
    return stats


# -- reading /metrics back ------------------------------------------------------------------------------------------


class Metrics:
    """The samples of one scrape of the Prometheus text format."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def select(self, name: str, **labels: str) -> Iterator[tuple[dict[str, str], float]]:
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
                yield sample_labels, value

    def sum(self, name: str, **labels: str) -> float:
        return sum(value for _, value in self.select(name, **labels))

    def values(self, name: str, label: str, **labels: str) -> list[str]:
        return sorted({sample_labels[label] for sample_labels, _ in self.select(name, **labels)})

    def quantile(self, q: float, histogram: str, **labels: str) -> float | None:
        """`histogram_quantile` over the matching series (summed per bucket), as Prometheus computes it."""
        buckets: dict[float, float] = defaultdict(float)
        for sample_labels, value in self.select(f"{histogram}_bucket", **labels):
            buckets[float(sample_labels["le"])] += value
        return histogram_quantile(q, buckets)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return lower


def table(headers: list[str], rows: Iterable[list[str]], text_columns: int = 1) -> str:
    """A plain-text table: the first `text_columns` columns left-aligned, the numbers right-aligned."""
    rows = [headers, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def summary(metrics: Metrics, stats: Stats) -> str:
    calls = "llmguard_llm_calls_total"
    tokens = "llmguard_tokens_total"
    out: list[str] = []
    rows = []
    for feature in metrics.values(calls, "feature"):
        prompt = sum(metrics.sum(tokens, feature=feature, type=t) for t in ("input", "cache_read", "cache_write"))
        rows.append([
            feature,
            f"{metrics.sum(calls, feature=feature):.0f}",
            f"{metrics.sum(calls, feature=feature, outcome='error'):.0f}",
            seconds(metrics.quantile(0.5, "llmguard_time_to_first_token_seconds", feature=feature)),
            f"{prompt:,.0f}",
            f"{metrics.sum(tokens, feature=feature, type='cache_read'):,.0f}",
            f"{metrics.sum(tokens, feature=feature, type='output'):,.0f}",
            f"{metrics.sum('llmguard_tool_calls_total', feature=feature):.0f}",
            f"${metrics.sum('llmguard_cost_usd_total', feature=feature):.4f}",
            f"{metrics.sum('llmguard_guard_blocks_total', feature=feature):.0f}",
        ])  # fmt: skip
    headers = ["feature", "LLM calls", "errors", "p50 TTFT", "input tok", "cached", "output tok", "tool calls",
               "cost", "blocks"]  # fmt: skip
    out += ["Per feature (route):", table(headers, rows), ""]

    rows = []
    for model in metrics.values(calls, "model"):
        rate = metrics.quantile(0.5, "llmguard_output_tokens_per_second", model=model)
        rows.append([
            model,
            ", ".join(metrics.values(calls, "provider", model=model)),
            f"{metrics.sum(calls, model=model):.0f}",
            seconds(metrics.quantile(0.5, "llmguard_time_to_first_token_seconds", model=model)),
            seconds(metrics.quantile(0.95, "llmguard_time_to_first_token_seconds", model=model)),
            "-" if rate is None else f"{rate:.0f}/s",
            f"${metrics.sum('llmguard_cost_usd_total', model=model):.4f}",
        ])  # fmt: skip
    out += [
        "Per model:",
        table(["model", "provider", "LLM calls", "p50 TTFT", "p95 TTFT", "decode p50", "cost"], rows, 2),
    ]

    prompt = sum(metrics.sum(tokens, type=t) for t in ("input", "cache_read", "cache_write"))
    cache = metrics.sum(tokens, type="cache_read") / prompt if prompt else 0.0
    blocks = ", ".join(
        f"{reason} {metrics.sum('llmguard_guard_blocks_total', reason=reason):.0f}"
        for reason in metrics.values("llmguard_guard_blocks_total", "reason")
    )
    statuses = ", ".join(f"{status} x{n}" for status, n in sorted(stats.statuses.items()))
    out += [
        "",
        f"  total spend ${metrics.sum('llmguard_cost_usd_total'):.4f} · prompt cache hit ratio {cache:.0%} "
        f"(token-weighted) · loop warnings {metrics.sum('llmguard_loop_warnings_total'):.0f}",
        f"  guard blocks: {blocks or 'none'} · runaway agents stopped: {stats.runaways_stopped}",
        f"  HTTP responses to the users: {statuses} · sessions {stats.sessions}",
    ]
    return "\n".join(out)


# -- wiring ---------------------------------------------------------------------------------------------------------


class Collect(logging.Handler):
    """Keeps llmguard's log lines (unpriced models, repeating agents) off the progress line; shown at the end."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages[record.getMessage()] += 1


def load_example_app() -> ModuleType:
    name = "llmguard_example_fastapi"
    spec = importlib.util.spec_from_file_location(name, HERE / "fastapi_app" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the request models' annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llmguard demo: a simulated provider, the FastAPI example, traffic.")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of traffic (default: 20)")
    parser.add_argument("--keep-running", action="store_true", help="keep the servers up after the traffic (Ctrl-C)")
    parser.add_argument("--host", default="127.0.0.1", help="interface for both servers (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port of the example app (default: 8000, else any)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the traffic (default: 1)")
    args = parser.parse_args(argv)

    collected = Collect()
    llmguard_log = logging.getLogger("llmguard")
    llmguard_log.addHandler(collected)
    llmguard_log.setLevel(logging.INFO)
    llmguard_log.propagate = False

    with serve(DemoProvider(args.seed), host=args.host) as provider_url:
        # The example builds its SDK clients at start-up from the standard variables: point them at the simulator.
        os.environ["OPENAI_BASE_URL"] = f"{provider_url}/v1"
        os.environ["ANTHROPIC_BASE_URL"] = provider_url
        os.environ["OPENAI_API_KEY"] = os.environ["ANTHROPIC_API_KEY"] = DEMO_KEY  # never send a real key here
        os.environ.setdefault("LLMGUARD_PRICES", json.dumps(SIM_PRICES))
        example = load_example_app()
        port = args.port if free(args.host, args.port) else 0
        with serve(example.app, host=args.host, port=port) as app_url:
            print(f"simulated provider  {provider_url}   (OpenAI at /v1, Anthropic at /v1/messages)")
            print(f"FastAPI example     {app_url}   (POST /chat, POST /agent; session = x-session-id header)")
            print(f"Prometheus metrics  {app_url}/metrics")
            print(f"\n{USERS} users and a runaway agent for {args.duration:g} s …\n")
            try:
                stats = asyncio.run(run_traffic(app_url, args.duration, args.seed))
                scrape = httpx.get(f"{app_url}/metrics", timeout=10)
            except KeyboardInterrupt:
                print("\ninterrupted")
                return 130
            print()
            print(summary(Metrics(scrape.text), stats))
            if collected.messages:
                print("\nllmguard said:")
                for message, count in collected.messages.most_common():
                    print(f"  {message}" + (f"  (x{count})" if count > 1 else ""))
            problems = list(stats.unexpected)
            if not stats.statuses.get("200"):
                problems.append("no request succeeded")
            if problems:
                print("\nUnexpected:", *sorted(set(problems)), sep="\n  ")
                return 1
            if args.keep_running:
                print(f"\nStill serving. Try:\n  curl -s {app_url}/metrics | grep '^llmguard_'")
                print(f"  curl -s {app_url}/chat -H 'x-session-id: me' -H 'content-type: application/json' "
                      """-d '{"message": "hi", "provider": "anthropic"}'""")  # fmt: skip
                print("Ctrl-C to stop.")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(1)
                print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
