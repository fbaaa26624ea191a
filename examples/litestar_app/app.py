"""Litestar + llmguard: every OpenAI / Anthropic call of the app is metered, priced and guarded per session.

The same service as the FastAPI example. The official SDKs are used unchanged: `guard.instrument()` meters the
httpx clients inside them. The session is the `x-session-id` request header; the feature is the route template.

    # against the simulated provider (no keys needed)
    python -m llmguard.testing --port 8100 &
    OPENAI_BASE_URL=http://127.0.0.1:8100/v1 ANTHROPIC_BASE_URL=http://127.0.0.1:8100 \
        uvicorn app:app --app-dir examples/litestar_app --port 8000

On Litestar, `LLMGuardPlugin` wires llmguard in: the middleware, the 402/429 `application/problem+json` answer to
an unhandled `GuardBlocked` (Litestar's own exception handling sits in front of app middleware), and `GET /metrics`
(Litestar runs app middleware only for routes that exist).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anthropic
import openai
from litestar import Litestar, Response, post
from litestar.params import Body
from litestar.response import Stream
from pydantic import BaseModel, Field

from llmguard import Guard
from llmguard.litestar import LLMGuardPlugin

Provider = Literal["openai", "anthropic"]

DEFAULT_MODELS: dict[str, str] = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5"}
MAX_TOKENS = 1024  # Anthropic requires it; it is also what llmguard reserves against a budget before the call
DEMO_KEY = "sk-llmguard-demo"  # the simulated provider accepts any key

SYSTEM = "You are a helpful assistant. Use the lookup tool when you need facts."
LOOKUP_DESCRIPTION = "Look something up in the local notes."
LOOKUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "What to look up."}},
    "required": ["query"],
}
OPENAI_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "lookup", "description": LOOKUP_DESCRIPTION, "parameters": LOOKUP_SCHEMA}}
]
ANTHROPIC_TOOLS: list[Any] = [{"name": "lookup", "description": LOOKUP_DESCRIPTION, "input_schema": LOOKUP_SCHEMA}]


class ChatRequest(BaseModel):
    message: str
    provider: Provider = "openai"
    model: str | None = None
    stream: bool = False


class AgentRequest(BaseModel):
    task: str
    provider: Provider = "openai"
    model: str | None = None
    max_steps: int = Field(default=8, ge=1, le=50)


def lookup(query: str) -> str:
    """The agent's one tool: harmless and local."""
    return f"The notes on {query!r} say: nothing unusual, carry on."


def run_tool(name: str, arguments: dict[str, Any]) -> str:
    if name != "lookup":
        return f"error: there is no tool named {name!r}"
    return lookup(str(arguments.get("query", "")))


guard = Guard()  # settings from LLMGUARD_* environment variables; the in-memory store unless LLMGUARD_REDIS_URL


def create_app(guard: Guard = guard) -> Litestar:
    clients: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        guard.instrument()  # before the clients exist, so every client built from here on is metered
        # Default arguments: base URLs come from OPENAI_BASE_URL / ANTHROPIC_BASE_URL.
        clients["openai"] = openai.AsyncOpenAI(api_key=os.environ.get("OPENAI_API_KEY", DEMO_KEY))
        clients["anthropic"] = anthropic.AsyncAnthropic(api_key=os.environ.get("ANTHROPIC_API_KEY", DEMO_KEY))
        try:
            yield
        finally:
            await clients.pop("openai").close()
            await clients.pop("anthropic").close()
            guard.uninstrument()
            await guard.aclose()

    @post("/chat", status_code=200)
    async def chat(data: Annotated[ChatRequest, Body()]) -> Response[Any]:
        model = data.model or DEFAULT_MODELS[data.provider]
        messages: list[Any] = [{"role": "user", "content": data.message}]
        if data.provider == "openai":
            client: openai.AsyncOpenAI = clients["openai"]
            if data.stream:
                # The request is sent here, before the response starts, so a block still gets a proper status.
                stream = await client.chat.completions.create(
                    model=model, messages=messages, stream=True, stream_options={"include_usage": True}
                )
                return _sse(_openai_text(stream))
            completion = await client.chat.completions.create(model=model, messages=messages)
            return Response({"reply": completion.choices[0].message.content or "", "model": completion.model})
        claude: anthropic.AsyncAnthropic = clients["anthropic"]
        if data.stream:
            events = await claude.messages.create(model=model, max_tokens=MAX_TOKENS, messages=messages, stream=True)
            return _sse(_anthropic_text(events))
        message = await claude.messages.create(model=model, max_tokens=MAX_TOKENS, messages=messages)
        reply = "".join(block.text for block in message.content if block.type == "text")
        return Response({"reply": reply, "model": message.model})

    @post("/agent", status_code=200)
    async def agent(data: Annotated[AgentRequest, Body()]) -> dict[str, Any]:
        model = data.model or DEFAULT_MODELS[data.provider]
        if data.provider == "openai":
            answer, steps = await _openai_agent(clients["openai"], model, data.task, data.max_steps)
        else:
            answer, steps = await _anthropic_agent(clients["anthropic"], model, data.task, data.max_steps)
        return {"answer": answer, "steps": steps}

    return Litestar(
        route_handlers=[chat, agent],
        lifespan=[lifespan],
        plugins=[LLMGuardPlugin(guard)],  # the middleware, 402/429 problem documents, and GET /metrics
    )


async def _openai_agent(client: openai.AsyncOpenAI, model: str, task: str, max_steps: int) -> tuple[str | None, int]:
    """Chat Completions tool loop. `steps` counts model calls; the answer is None if `max_steps` ran out."""
    messages: list[Any] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task}]
    for step in range(1, max_steps + 1):
        completion = await client.chat.completions.create(model=model, messages=messages, tools=OPENAI_TOOLS)
        message = completion.choices[0].message
        calls = [call for call in message.tool_calls or [] if call.type == "function"]
        if not calls:
            return message.content or "", step
        messages.append(message.model_dump(exclude_none=True))
        for call in calls:
            arguments = json.loads(call.function.arguments or "{}")
            result = run_tool(call.function.name, arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return None, max_steps


async def _anthropic_agent(
    client: anthropic.AsyncAnthropic, model: str, task: str, max_steps: int
) -> tuple[str | None, int]:
    """Messages API tool loop, the same contract as `_openai_agent`."""
    messages: list[Any] = [{"role": "user", "content": task}]
    for step in range(1, max_steps + 1):
        response = await client.messages.create(
            model=model, max_tokens=MAX_TOKENS, system=SYSTEM, tools=ANTHROPIC_TOOLS, messages=messages
        )
        uses = [block for block in response.content if block.type == "tool_use"]
        if not uses:
            return "".join(block.text for block in response.content if block.type == "text"), step
        messages.append({"role": "assistant", "content": response.content})
        results = [
            {"type": "tool_result", "tool_use_id": use.id, "content": run_tool(use.name, dict(use.input))}
            for use in uses
        ]
        messages.append({"role": "user", "content": results})
    return None, max_steps


async def _openai_text(stream: Any) -> AsyncIterator[str]:
    async with stream:  # closes the upstream response if our client goes away mid-stream
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


async def _anthropic_text(stream: Any) -> AsyncIterator[str]:
    async with stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                yield event.delta.text


def _sse(deltas: AsyncIterator[str]) -> Stream:
    async def events() -> AsyncIterator[bytes]:
        async for text in deltas:
            yield f"data: {json.dumps({'delta': text}, ensure_ascii=False)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return Stream(events(), media_type="text/event-stream", headers=headers)


app = create_app()
