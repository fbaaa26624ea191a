"""The guarded transports: byte-exact pass-through, bounded memory, httpx/httpx2 mixing, failures, sync clients."""

from __future__ import annotations

import json
import socket
import tracemalloc
from collections.abc import Iterator

import httpx
import httpx2
import openai
import pytest
from prometheus_client import CollectorRegistry

from llmguard import Guard
from llmguard.testing import Scenario, SimulatedProvider, serve
from llmguard.types import Message, Receive, Scope, Send
from tests.conftest import ProviderSwitch
from tests.e2e.helpers import total, value

MODEL = "gpt-4o-mini"
CHAT = {"provider": "openai", "model": MODEL, "feature": "unknown"}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


class BodyRecorder:
    """Records the exact bytes an ASGI app writes in its responses (the provider side of the wire)."""

    def __init__(self, app: ProviderSwitch) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, recording_send)
        self.bodies.append(b"".join(chunks))


@pytest.fixture(scope="module")
def recorded_server() -> Iterator[tuple[ProviderSwitch, BodyRecorder, str]]:
    switch = ProviderSwitch()
    recorder = BodyRecorder(switch)
    with serve(recorder) as url:
        yield switch, recorder, url


@pytest.mark.parametrize("line_ending", ["\r\n", "\r", "\n"])
async def test_sdk_reads_exactly_the_bytes_the_provider_wrote(
    guard: Guard,
    registry: CollectorRegistry,
    recorded_server: tuple[ProviderSwitch, BodyRecorder, str],
    line_ending: str,
) -> None:
    switch, recorder, url = recorded_server
    switch.app = SimulatedProvider(
        default=Scenario(line_ending=line_ending, slice_sizes=(1, 3, 7, 13, 2), content_chunks=30, input_tokens=40)
    )
    recorder.bodies.clear()
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="t", http_client=guard.async_client()) as client:
        async with client.chat.completions.with_streaming_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            received = b"".join([chunk async for chunk in response.iter_bytes()])
    assert received == recorder.bodies[0]
    assert "漢字".encode() in received  # multi-byte characters were split across slices on the wire
    # ...and the parser, fed the same odd slices, still saw every event.
    assert value(registry, "llmguard_llm_calls_total", **CHAT, outcome="success", finish_reason="stop") == 1
    assert value(registry, "llmguard_tokens_total", **CHAT, type="output") == 30
    assert value(registry, "llmguard_tokens_total", **CHAT, type="input") == 40


async def _long_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """A provider that streams about 6 MB of Chat Completions chunks."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": MODEL,
             "choices": [{"index": 0, "delta": {"content": "x" * 200}, "finish_reason": None}]}  # fmt: skip
    line = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for _ in range(20_000):
        await send({"type": "http.response.body", "body": line, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def test_memory_does_not_grow_with_stream_length(guard: Guard, registry: CollectorRegistry) -> None:
    with serve(_long_stream) as url:
        async with guard.async_client() as client:
            tracemalloc.start()
            try:
                received = 0
                async with client.stream("POST", f"{url}/v1/chat/completions", json=BODY) as response:
                    async for chunk in response.aiter_raw():
                        received += len(chunk)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert received > 5_000_000
    assert peak < 1_000_000, peak
    assert value(registry, "llmguard_llm_calls_total", **CHAT, outcome="success", finish_reason="unknown") == 1


async def test_requests_that_are_not_llm_calls_pass_through(
    guard: Guard, registry: CollectorRegistry, provider_url: str
) -> None:
    async with guard.async_client() as client:
        response = await client.get(f"{provider_url}/v1/models")
        posted = await client.post(f"{provider_url}/v1/embeddings", json={"input": "x"})
    assert response.status_code == 404 and posted.status_code == 404
    assert total(registry, "llmguard_llm_calls_total") == 0


async def test_posts_that_only_look_like_llm_paths_pass_through(registry: CollectorRegistry, provider_url: str) -> None:
    guard = Guard(registry=registry, session_budget_usd=1.0)  # a cap would refuse an unpriced LLM call
    async with guard.async_client() as client, guard.session("forms"):
        response = await client.post(f"{provider_url}/api/forms/42/responses", json={"answers": [1, 2]})
        also = await client.post(f"{provider_url}/v1/chat/completions", content=b"not json")
    assert response.status_code == 200 and also.status_code == 400  # the server answered both: nothing was blocked
    assert total(registry, "llmguard_llm_calls_total") == 0 and total(registry, "llmguard_guard_blocks_total") == 0


async def test_azure_deployment_path_names_the_model(
    registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    guard = Guard(registry=registry)
    provider.default = Scenario(input_tokens=10, content_chunks=2)
    body = {"messages": [{"role": "user", "content": "hi"}]}  # Azure: the deployment, not the body, names it
    async with guard.async_client() as client:
        url = f"{provider_url}/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
        await client.post(url, json=body)
    labels = {"provider": "openai", "model": "prod-gpt4o", "feature": "unknown"}
    assert value(registry, "llmguard_llm_calls_total", **labels, outcome="success", finish_reason="stop") == 1


async def test_unparseable_stream_passes_through_and_is_counted(guard: Guard, registry: CollectorRegistry) -> None:
    garbage = b"data: {not json\n\ndata: [DONE]\n\n"

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": garbage})

    with serve(broken) as url:
        async with guard.async_client() as client:
            response = await client.post(f"{url}/v1/chat/completions", json=BODY)
    assert response.content == garbage
    assert value(registry, "llmguard_unparsed_responses_total", **CHAT) == 1
    assert total(registry, "llmguard_llm_calls_total") == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_refused_connection_is_an_error_and_costs_nothing(guard: Guard, registry: CollectorRegistry) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    async with (
        openai.AsyncOpenAI(base_url=url, api_key="t", http_client=guard.async_client(), max_retries=1) as client,
        guard.session("unreachable"),
    ):
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert value(registry, "llmguard_errors_total", **CHAT, error_type="connection") == 2
    assert value(registry, "llmguard_llm_calls_total", **CHAT, outcome="error", finish_reason="error") == 1
    state = await guard.get_session("unreachable")
    # The request never left: its hold is released, nothing is charged.
    assert state is not None and state.spent_usd == 0 and state.held_usd == 0


async def test_read_timeout(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    provider.default = Scenario(first_token_delay=1.0)
    async with openai.AsyncOpenAI(
        base_url=f"{provider_url}/v1", api_key="t", http_client=guard.async_client(), max_retries=0, timeout=0.2
    ) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert value(registry, "llmguard_errors_total", **CHAT, error_type="timeout") == 1


async def test_legacy_httpx_inner_transport_in_httpx2_client(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    provider.default = Scenario(input_tokens=7, content_chunks=3)
    async with httpx2.AsyncClient(transport=guard.async_transport(httpx.AsyncHTTPTransport())) as client:
        response = await client.post(f"{provider_url}/v1/chat/completions", json={**BODY, "stream": False})
    assert response.json()["usage"]["prompt_tokens"] == 7
    assert value(registry, "llmguard_tokens_total", **CHAT, type="input") == 7


async def test_guarded_transport_in_legacy_httpx_client(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    provider.default = Scenario(input_tokens=9, content_chunks=4)
    async with httpx.AsyncClient(transport=guard.async_transport()) as client:  # type: ignore[arg-type]
        async with client.stream("POST", f"{provider_url}/v1/chat/completions", json=BODY) as response:
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert body.endswith(b"data: [DONE]\n\n")
    assert value(registry, "llmguard_llm_calls_total", **CHAT, outcome="success", finish_reason="stop") == 1


def test_sync_clients(registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str) -> None:
    guard = Guard(registry=registry)
    provider.default = Scenario(input_tokens=11, content_chunks=5)
    with guard.session("sync-session", feature="sync"):
        with openai.OpenAI(base_url=f"{provider_url}/v1", api_key="t", http_client=guard.client()) as client:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            stream = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            _ = list(stream)
        with httpx.Client(transport=guard.transport(httpx.HTTPTransport())) as legacy:  # type: ignore[arg-type]
            legacy.post(f"{provider_url}/v1/chat/completions", json={**BODY, "stream": False})
    labels = {**CHAT, "feature": "sync"}
    assert value(registry, "llmguard_llm_calls_total", **labels, outcome="success", finish_reason="stop") == 3
    assert value(registry, "llmguard_tokens_total", **labels, type="input") == 33
    state = guard.get_session_sync("sync-session")
    assert state is not None and state.llm_calls == 3


async def test_instrument_meters_clients_built_without_llmguard(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    provider.default = Scenario(input_tokens=5, content_chunks=2)
    messages = [{"role": "user", "content": "hi"}]

    async def call_with_fresh_clients() -> None:
        async with openai.AsyncOpenAI(base_url=f"{provider_url}/v1", api_key="t") as client:
            await client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        with openai.OpenAI(base_url=f"{provider_url}/v1", api_key="t") as sync_client:
            sync_client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        async with httpx.AsyncClient() as legacy:
            await legacy.post(f"{provider_url}/v1/chat/completions", json={**BODY, "stream": False})

    guard.instrument()
    guard.instrument()  # idempotent
    await call_with_fresh_clients()
    calls = "llmguard_llm_calls_total"
    assert value(registry, calls, **CHAT, outcome="success", finish_reason="stop") == 3

    guard.uninstrument()
    guard.uninstrument()
    await call_with_fresh_clients()
    assert value(registry, calls, **CHAT, outcome="success", finish_reason="stop") == 3
    assert len(provider.requests) == 6


async def test_guarded_client_under_instrument_meters_once(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    guard.instrument()
    async with guard.async_client() as client:
        await client.post(f"{provider_url}/v1/chat/completions", json={**BODY, "stream": False})
    assert total(registry, "llmguard_llm_calls_total") == 1


class _SubclassedTransport(httpx2.AsyncBaseTransport):
    """A user's own transport class, defined outside any HTTP library's package."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.seen = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.seen += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_user_transport_subclass_as_inner(
    guard: Guard, registry: CollectorRegistry, provider: SimulatedProvider, provider_url: str
) -> None:
    inner = _SubclassedTransport()
    async with httpx2.AsyncClient(transport=guard.async_transport(inner)) as client:
        response = await client.post(f"{provider_url}/v1/chat/completions", json={**BODY, "stream": False})
    assert response.status_code == 200 and inner.seen == 1
    assert total(registry, "llmguard_llm_calls_total") == 1
