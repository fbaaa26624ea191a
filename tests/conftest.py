from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import CollectorRegistry

from llmguard import Guard
from llmguard.testing import SimulatedProvider, serve
from llmguard.types import Receive, Scope, Send
from tests.servers import redis_cluster


class ProviderSwitch:
    """Forwards to the current test's provider, so one uvicorn server serves the whole test session."""

    def __init__(self) -> None:
        self.app = SimulatedProvider()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@pytest.fixture(scope="session")
def provider_server() -> Iterator[tuple[ProviderSwitch, str]]:
    switch = ProviderSwitch()
    with serve(switch) as url:
        yield switch, url


@pytest.fixture
def provider(provider_server: tuple[ProviderSwitch, str]) -> SimulatedProvider:
    switch, _ = provider_server
    switch.app = SimulatedProvider()
    return switch.app


@pytest.fixture
def provider_url(provider_server: tuple[ProviderSwitch, str], provider: SimulatedProvider) -> str:
    return provider_server[1]


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-master Redis Cluster on loopback, started once per test session."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def guard(registry: CollectorRegistry) -> AsyncIterator[Guard]:
    guard = Guard(registry=registry)
    yield guard
    guard.uninstrument()
    await guard.aclose()
