"""A simulated LLM provider for tests: an ASGI app that speaks the OpenAI and Anthropic wire formats.

Point the official SDKs at it and script what the "model" does::

    from llmguard.testing import Scenario, SimulatedProvider, serve

    provider = SimulatedProvider(default=Scenario(text="hi there", first_token_delay=0.05))
    with serve(provider) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x")
        ...

Supported: ``POST …/chat/completions`` (OpenAI Chat Completions), ``…/responses`` (OpenAI Responses),
``…/messages`` (Anthropic Messages), streamed and not, plus ``GET``/``DELETE …/_sim/requests`` for the request log.
Run it standalone with ``python -m llmguard.testing --port 8100``.
"""

from __future__ import annotations

from ._app import SCENARIO_HEADER, RecordedRequest, SimulatedProvider
from ._builtin import AGENT_ANSWER, AGENT_STEPS, BUILTIN_MODELS
from ._scenario import Scenario, ToolCall
from ._server import serve

__all__ = [
    "AGENT_ANSWER",
    "AGENT_STEPS",
    "BUILTIN_MODELS",
    "SCENARIO_HEADER",
    "RecordedRequest",
    "Scenario",
    "SimulatedProvider",
    "ToolCall",
    "serve",
]
