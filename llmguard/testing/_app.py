"""`SimulatedProvider`: an ASGI app that answers like OpenAI and Anthropic, driven by `Scenario` objects."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from ._builtin import builtin_scenario
from ._channel import Channel
from ._generation import Generation
from ._respond import ANTHROPIC, OPENAI_CHAT, OPENAI_RESPONSES, ApiSpec, respond, send_error
from ._scenario import Scenario, apply_overrides

__all__ = ["SCENARIO_HEADER", "RecordedRequest", "SimulatedProvider"]

SCENARIO_HEADER = "x-sim-scenario"
_LOG_SUFFIX = "/_sim/requests"


_ROUTES: tuple[tuple[str, ApiSpec], ...] = (
    ("/chat/completions", OPENAI_CHAT),
    ("/responses", OPENAI_RESPONSES),
    ("/messages", ANTHROPIC),
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the simulated provider received."""

    path: str
    api: str  # "openai_chat" | "openai_responses" | "anthropic"
    model: str
    stream: bool
    headers: dict[str, str]  # lower-case names
    json: Any  # the parsed request body (None if it was not valid JSON)
    received_at: float  # time.monotonic() when the request arrived
    # The usage the answer reports (total input incl. cache, cache_read, cache_write, output, reasoning), or None
    # when the answer is an error and reports none.
    usage: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SimulatedProvider:
    """An ASGI app that simulates the OpenAI (Chat Completions, Responses) and Anthropic (Messages) APIs.

    Routes match by path suffix, so any base-URL prefix works: ``POST …/chat/completions``, ``…/responses``,
    ``…/messages``; ``GET``/``DELETE …/_sim/requests`` read or clear the request log.

    The scenario of a request is, in order: ``scenarios[model]`` (a sequence is a script, consumed in order per
    model, whose last entry repeats), a built-in model (``sim-loop``, ``sim-cycle``, ``sim-agent``), or
    ``default``. A ``x-sim-scenario`` header holding a JSON object overrides fields of that scenario.
    """

    def __init__(
        self,
        default: Scenario | None = None,
        scenarios: Mapping[str, Scenario | Sequence[Scenario]] | None = None,
    ) -> None:
        self.default: Scenario = default if default is not None else Scenario()
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, tuple[Scenario, ...]] = {}
        self._positions: dict[str, int] = {}
        self._lock = threading.Lock()
        for model, scenario in (scenarios or {}).items():
            self.set_scenario(model, scenario)

    def set_scenario(self, model: str, scenario: Scenario | Sequence[Scenario]) -> None:
        """Use ``scenario`` (or the script of scenarios, from its start) for requests naming ``model``."""
        script = (scenario,) if isinstance(scenario, Scenario) else tuple(scenario)
        if not script or not all(isinstance(s, Scenario) for s in script):
            raise ValueError("a scenario script must be a non-empty sequence of Scenario objects")
        with self._lock:
            self._scripts[model] = script
            self._positions[model] = 0

    def reset(self) -> None:
        """Clear the request log and restart every script."""
        with self._lock:
            self.requests.clear()
            for model in self._positions:
                self._positions[model] = 0

    def scenario_for(self, model: str, api: str, body: Mapping[str, Any], overrides: str | None = None) -> Scenario:
        """Pick the scenario of a request (advances a script); raises `ValueError` for a bad override header."""
        with self._lock:
            script = self._scripts.get(model)
            if script is not None:
                position = self._positions[model]
                self._positions[model] = position + 1
                scenario = script[min(position, len(script) - 1)]
            else:
                scenario = builtin_scenario(model, api, body, self.default) or self.default
        if overrides is None:
            return scenario
        try:
            changes = json.loads(overrides)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{SCENARIO_HEADER} is not valid JSON: {exc}") from exc
        if not isinstance(changes, dict):
            raise ValueError(f"{SCENARIO_HEADER} must hold a JSON object")
        return apply_overrides(scenario, changes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets are not simulated
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.endswith(_LOG_SUFFIX):
            await self._log_endpoint(method, scope, receive, send)
            return
        for suffix, api in _ROUTES:
            if path.endswith(suffix):
                if method == "POST":
                    await self._handle(api, scope, receive, send)
                else:
                    await _plain_json(receive, send, 405, _route_error(api, f"Method {method} not allowed on {path}"))
                return
        await _plain_json(receive, send, 404, _route_error(_ROUTES[0][1], f"Unknown path {path}"))

    async def _log_endpoint(self, method: str, scope: Scope, receive: Receive, send: Send) -> None:
        if method == "GET":
            await _plain_json(receive, send, 200, [r.to_dict() for r in list(self.requests)])
        elif method == "DELETE":
            with self._lock:
                count = len(self.requests)
                self.requests.clear()
            await _plain_json(receive, send, 200, {"deleted": count})
        else:
            await _plain_json(receive, send, 405, {"error": {"message": f"Method {method} not allowed"}})

    async def _handle(self, api: ApiSpec, scope: Scope, receive: Receive, send: Send) -> None:
        received_at = time.monotonic()
        raw = await _read_body(receive)
        if raw is None:
            return  # the client left before sending its whole body
        headers = {k.decode("latin-1").lower(): _header_text(v) for k, v in scope["headers"]}
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        parsed = isinstance(body, dict)
        model = str(body.get("model", "")) if parsed else ""
        stream = parsed and body.get("stream") is True

        request_id = api.new_request_id()
        scenario: Scenario | None = None
        problem = "We could not parse the JSON body of your request."
        if parsed:
            try:
                scenario = self.scenario_for(model, api.name, body, headers.get(SCENARIO_HEADER))
            except ValueError as exc:
                problem = str(exc)
        usage = _reported_usage(scenario, model, body, len(raw)) if scenario is not None else None
        record = RecordedRequest(scope["path"], api.name, model, stream, headers, body, received_at, usage)
        self.requests.append(record)
        channel = Channel(receive, send, scenario.slice_sizes if scenario is not None else ())
        try:
            if scenario is None:
                await send_error(channel, api, 400, problem, request_id, received_at)
            else:
                await respond(channel, api, scenario, body, len(raw), request_id, received_at)
        finally:
            await channel.close()


def _reported_usage(scenario: Scenario, model: str, body: Any, body_size: int) -> dict[str, int] | None:
    if scenario.error_status is not None or (body.get("stream") is True and scenario.error_after_chunks is not None):
        return None
    gen = Generation.build(scenario, model, body, body_size)
    return {
        "input": gen.input_tokens,
        "cache_read": gen.cache_read,
        "cache_write": gen.cache_write,
        "output": gen.output_tokens,
        "reasoning": gen.reasoning,
    }


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _plain_json(receive: Receive, send: Send, status: int, payload: Any) -> None:
    if await _read_body(receive) is None:
        return
    channel = Channel(receive, send)
    try:
        await channel.send_json(status, {}, payload)
    finally:
        await channel.close()


def _route_error(api: ApiSpec, message: str) -> dict[str, Any]:
    if api.name == "anthropic":
        return {"type": "error", "error": {"type": "not_found_error", "message": message}, "request_id": None}
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _header_text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")
