"""How much llmguard adds to an LLM call and to an inbound request, as ratios against a baseline in the same run.

Everything runs in-process against canned provider bytes, so the figures isolate llmguard's own cost (parsing,
accounting, metrics) from the network. Run: `.venv/bin/python bench/bench_overhead.py`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llmguard import Guard, LLMGuardMiddleware

MODEL = "gpt-4o-mini"
REDIS_URL = "redis://127.0.0.1:6379/0"
REQUEST = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello " * 20}], "stream": True}


def sse_chunks(tokens: int) -> list[bytes]:
    """Chat Completions chunks as OpenAI writes them (compact JSON, one event per token)."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}

    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    chunks = [event({**base, "choices": [role], "usage": None})]
    for i in range(tokens):
        choice = {"index": 0, "delta": {"content": f" tok{i}"}, "logprobs": None, "finish_reason": None}
        chunks.append(event({**base, "choices": [choice], "usage": None}))
    usage = {"prompt_tokens": 40, "completion_tokens": tokens, "total_tokens": 40 + tokens}
    done = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}
    chunks.append(event(done) + event({**base, "choices": [], "usage": usage}) + b"data: [DONE]\n\n")
    return chunks


class CannedStream(httpx2.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class CannedProvider(httpx2.AsyncBaseTransport):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        headers = {"content-type": "text/event-stream; charset=utf-8"}
        return httpx2.Response(200, headers=headers, stream=CannedStream(self._chunks))


async def per_call(client: httpx2.AsyncClient, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        async with client.stream("POST", "http://llm.test/v1/chat/completions", json=REQUEST) as response:
            async for _chunk in response.aiter_raw():
                pass
    return (time.perf_counter() - start) / calls


async def best_of(run: Callable[[], Awaitable[float]], repeats: int = 7) -> float:
    return statistics.median([await run() for _ in range(repeats)])


async def bench_transport(guard: Guard, tokens: int, calls: int) -> tuple[float, float]:
    chunks = sse_chunks(tokens)
    async with httpx2.AsyncClient(transport=CannedProvider(chunks)) as plain:
        async with guard.async_client(transport=CannedProvider(chunks)) as guarded, guard.session("bench-session"):
            await per_call(plain, 20)
            await per_call(guarded, 20)
            baseline = await best_of(lambda: per_call(plain, calls))
            metered = await best_of(lambda: per_call(guarded, calls))
    return baseline, metered


async def bench_middleware(guard: Guard, requests: int) -> tuple[float, float]:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    bare = Starlette(routes=[Route("/chat", ok, methods=["POST"])])
    wrapped = Starlette(routes=[Route("/chat", ok, methods=["POST"])])
    wrapped.add_middleware(LLMGuardMiddleware, guard=guard)

    async def drive(app: Any) -> float:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://app") as client:
            start = time.perf_counter()
            for i in range(requests):
                await client.post("/chat", headers={"x-session-id": f"s{i % 50}"})
            return (time.perf_counter() - start) / requests

    await drive(bare)
    await drive(wrapped)
    return await best_of(lambda: drive(bare)), await best_of(lambda: drive(wrapped))


def row(case: str, baseline: float, measured: float) -> None:
    added = measured - baseline
    print(
        f"{case:<44}{baseline * 1e6:>10.0f}µs{measured * 1e6:>10.0f}µs{added * 1e6:>10.0f}µs{measured / baseline:>8.2f}"
    )


async def main() -> None:
    print(f"{'case':<44}{'baseline':>12}{'llmguard':>12}{'added':>12}{'ratio':>8}")
    guard = Guard(registry=CollectorRegistry())
    for tokens, calls in ((1, 300), (100, 100), (1000, 20)):
        row(f"streamed call, {tokens} tokens, memory store", *await bench_transport(guard, tokens, calls))
    redis_guard = Guard(registry=CollectorRegistry(), redis_url=REDIS_URL, redis_prefix="llmguard-bench")
    try:
        row("streamed call, 100 tokens, Redis store", *await bench_transport(redis_guard, 100, 100))
    finally:
        await redis_guard.aclose()
    row("inbound request (no LLM call)", *await bench_middleware(guard, 300))


if __name__ == "__main__":
    asyncio.run(main())
