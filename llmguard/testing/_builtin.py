"""Built-in simulated models, decided from the request body alone (so they work across processes)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._scenario import Scenario, ToolCall

__all__ = ["AGENT_STEPS", "BUILTIN_MODELS", "builtin_scenario", "count_tool_results"]

AGENT_STEPS = 3
AGENT_ANSWER = f"All {AGENT_STEPS} lookups are done: here is the answer."


def count_tool_results(api: str, body: Mapping[str, Any]) -> int:
    """How many tool results the conversation in a request body already holds."""
    if api == "openai_chat":
        return sum(1 for m in _dicts(body.get("messages")) if m.get("role") == "tool")
    if api == "openai_responses":
        return sum(1 for item in _dicts(body.get("input")) if item.get("type") == "function_call_output")
    if api == "anthropic":
        return sum(
            1
            for m in _dicts(body.get("messages"))
            if m.get("role") == "user"
            for block in _dicts(m.get("content"))
            if block.get("type") == "tool_result"
        )
    return 0


def _dicts(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _loop(base: Scenario, results: int) -> Scenario:
    return base.replace(text="", content_chunks=None, tool_calls=(ToolCall("lookup", {"query": "same"}),))


def _cycle(base: Scenario, results: int) -> Scenario:
    call = ToolCall("step_a", {"n": 1}) if results % 2 == 0 else ToolCall("step_b", {"n": 2})
    return base.replace(text="", content_chunks=None, tool_calls=(call,))


def _agent(base: Scenario, results: int) -> Scenario:
    if results >= AGENT_STEPS:
        return base.replace(text=AGENT_ANSWER, content_chunks=None, tool_calls=(), finish_reason="stop")
    call = ToolCall("lookup", {"query": f"step {results}"})
    return base.replace(text="", content_chunks=None, tool_calls=(call,))


BUILTIN_MODELS: dict[str, Callable[[Scenario, int], Scenario]] = {
    "sim-loop": _loop,
    "sim-cycle": _cycle,
    "sim-agent": _agent,
}


def builtin_scenario(model: str, api: str, body: Mapping[str, Any], base: Scenario) -> Scenario | None:
    """The scenario of a built-in model (derived from ``base`` for timing and usage), or None."""
    make = BUILTIN_MODELS.get(model)
    if make is None:
        return None
    return make(base, count_tool_results(api, body))
