"""Pieces of the small Starlette apps the middleware tests serve."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import openai
from starlette.applications import Starlette

from llmguard import Guard


def llm_lifespan(guard: Guard, provider_url: str) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """A lifespan that puts a guarded OpenAI client, pointed at the simulated provider, in `app.state.llm`."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with openai.AsyncOpenAI(
            base_url=f"{provider_url}/v1", api_key="t", http_client=guard.async_client()
        ) as llm:
            app.state.llm = llm
            yield

    return lifespan
