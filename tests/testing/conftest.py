from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from starlette.types import Receive, Scope, Send

from llmguard.testing import SimulatedProvider, serve


class _Switch:
    """An ASGI app that forwards to the current test's provider, so one server serves the whole session."""

    def __init__(self) -> None:
        self.app = SimulatedProvider()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@pytest.fixture(scope="session")
def _server() -> Iterator[tuple[_Switch, str]]:
    switch = _Switch()
    with serve(switch) as url:
        yield switch, url


@pytest.fixture(autouse=True)
def provider(_server: tuple[_Switch, str]) -> SimulatedProvider:
    """A fresh provider for every test, served at `base_url` (and by the session clients)."""
    switch, _ = _server
    switch.app = SimulatedProvider()
    return switch.app


@pytest.fixture
def base_url(_server: tuple[_Switch, str], provider: SimulatedProvider) -> str:
    return _server[1]


@pytest.fixture(scope="session")
def oai(_server: tuple[_Switch, str]) -> Iterator[openai.OpenAI]:
    """One OpenAI client for the session (clients are slow to build); no retries."""
    with openai.OpenAI(base_url=f"{_server[1]}/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture(scope="session")
def ant(_server: tuple[_Switch, str]) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=_server[1], api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture(scope="session")
def http(_server: tuple[_Switch, str]) -> Iterator[httpx.Client]:
    """A plain HTTP client whose relative URLs go to the server."""
    with httpx.Client(base_url=_server[1]) as client:
        yield client
