from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from llmguard.testing import SCENARIO_HEADER, RecordedRequest, Scenario, SimulatedProvider, ToolCall

USER: Any = {"role": "user", "content": "go"}


# --- built-in models, one agent loop per wire format -------------------------------------------------------------


def _run_chat(client: openai.OpenAI, model: str, turns: int) -> list[tuple[str, str] | str]:
    messages: list[Any] = [USER]
    seen: list[tuple[str, str] | str] = []
    for _ in range(turns):
        with client.chat.completions.stream(model=model, messages=messages) as stream:
            message = stream.get_final_completion().choices[0].message
        if not message.tool_calls:
            seen.append(message.content or "")
            break
        call = message.tool_calls[0]
        seen.append((call.function.name, call.function.arguments))
        messages.append(message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
    return seen


def _run_responses(client: openai.OpenAI, model: str, turns: int) -> list[tuple[str, str] | str]:
    items: list[Any] = [USER]
    seen: list[tuple[str, str] | str] = []
    for _ in range(turns):
        response = client.responses.create(model=model, input=items)
        calls = [item for item in response.output if item.type == "function_call"]
        if not calls:
            seen.append(response.output_text)
            break
        seen.append((calls[0].name, calls[0].arguments))
        items.append({"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name, "arguments": "{}"})
        items.append({"type": "function_call_output", "call_id": calls[0].call_id, "output": "ok"})
    return seen


def _run_anthropic(client: anthropic.Anthropic, model: str, turns: int) -> list[tuple[str, str] | str]:
    messages: list[Any] = [USER]
    seen: list[tuple[str, str] | str] = []
    for _ in range(turns):
        with client.messages.stream(model=model, max_tokens=100, messages=messages) as stream:
            message = stream.get_final_message()
        tools = [block for block in message.content if block.type == "tool_use"]
        if not tools:
            seen.append("".join(block.text for block in message.content if block.type == "text"))
            break
        seen.append((tools[0].name, json.dumps(tools[0].input)))
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]})
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tools[0].id, "content": "ok"}]}
        )
    return seen


def _run(
    kind: str, oai: openai.OpenAI, ant: anthropic.Anthropic, model: str, turns: int
) -> list[tuple[str, str] | str]:
    if kind == "chat":
        return _run_chat(oai, model, turns)
    if kind == "responses":
        return _run_responses(oai, model, turns)
    return _run_anthropic(ant, model, turns)


@pytest.mark.parametrize("kind", ["chat", "responses", "anthropic"])
def test_builtin_models(kind: str, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    same = ("lookup", '{"query": "same"}')
    assert _run(kind, oai, ant, "sim-loop", 3) == [same, same, same]
    step_a, step_b = ("step_a", '{"n": 1}'), ("step_b", '{"n": 2}')
    assert _run(kind, oai, ant, "sim-cycle", 4) == [step_a, step_b, step_a, step_b]
    assert _run(kind, oai, ant, "sim-agent", 10) == [
        ("lookup", '{"query": "step 0"}'),
        ("lookup", '{"query": "step 1"}'),
        ("lookup", '{"query": "step 2"}'),
        "All 3 lookups are done: here is the answer.",
    ]


# --- scenario selection ------------------------------------------------------------------------------------------


def test_scripts_per_model_and_reset(provider: SimulatedProvider, oai: openai.OpenAI) -> None:
    provider.set_scenario("scripted", [Scenario(text="first"), Scenario(text="then")])
    provider.set_scenario("fixed", Scenario(text="always"))

    def ask(model: str) -> str | None:
        return oai.chat.completions.create(model=model, messages=[USER]).choices[0].message.content

    assert [ask("scripted"), ask("fixed"), ask("scripted"), ask("scripted")] == ["first", "always", "then", "then"]
    provider.default = Scenario(text="fallback")
    assert ask("other") == "fallback"
    provider.reset()
    assert provider.requests == []
    assert ask("scripted") == "first"


def test_scenarios_argument() -> None:
    provider = SimulatedProvider(default=Scenario(text="d"), scenarios={"a": Scenario(text="A"), "b": [Scenario()]})
    assert provider.scenario_for("a", "openai_chat", {}).text == "A"
    assert provider.scenario_for("zzz", "openai_chat", {}).text == "d"
    with pytest.raises(ValueError, match="non-empty"):
        provider.set_scenario("c", [])


def test_scenario_header(provider: SimulatedProvider, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    provider.default = Scenario(text="unused")
    overrides = {"text": "from header", "output_tokens": 77, "tool_calls": [{"name": "t", "arguments": {"a": 1}}]}
    headers = {SCENARIO_HEADER: json.dumps(overrides)}
    completion = oai.chat.completions.create(model="m", messages=[USER], extra_headers=headers)
    assert completion.choices[0].message.content == "from header"
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.completion_tokens == 77
    error_header = {SCENARIO_HEADER: json.dumps({"error_status": 529})}
    with pytest.raises(anthropic.OverloadedError):
        ant.messages.create(model="m", max_tokens=5, messages=[USER], extra_headers=error_header)


@pytest.mark.parametrize("header", ["{not json", "[1]", '{"bogus": 1}', '{"line_ending": "x"}', '{"chunk_gap": "x"}'])
def test_bad_scenario_header_is_a_400(oai: openai.OpenAI, header: str) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="m", messages=[USER], extra_headers={SCENARIO_HEADER: header})


# --- request log, routing -----------------------------------------------------------------------------------------


def test_request_log(provider: SimulatedProvider, http: httpx.Client, oai: openai.OpenAI) -> None:
    before = time.monotonic()
    oai.chat.completions.create(model="m1", messages=[USER], stream=True).close()
    http.post("/anything/v1/messages", json={"model": "m2", "messages": [], "max_tokens": 1})
    first, second = provider.requests
    assert isinstance(first, RecordedRequest)
    assert (first.path, first.api, first.model, first.stream) == ("/v1/chat/completions", "openai_chat", "m1", True)
    assert first.headers["authorization"] == "Bearer x"
    assert first.json["messages"] == [USER]
    assert first.received_at >= before
    assert (second.path, second.api, second.stream) == ("/anything/v1/messages", "anthropic", False)

    listed = http.get("/_sim/requests").json()
    assert [r["model"] for r in listed] == ["m1", "m2"]
    assert listed[0]["headers"]["authorization"] == "Bearer x"
    assert http.delete("/prefix/_sim/requests").json() == {"deleted": 2}
    assert provider.requests == []
    assert http.get("/_sim/requests").json() == []


def test_unknown_routes(http: httpx.Client) -> None:
    assert http.get("/v1/models").status_code == 404
    assert http.get("/v1/chat/completions").status_code == 405
    response = http.post("/v1/messages", content=b"not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- wire robustness: odd slices and line endings ------------------------------------------------------------------


@pytest.mark.parametrize("line_ending", ["\r\n", "\r", "\n"])
def test_odd_slices_and_line_endings(
    provider: SimulatedProvider, oai: openai.OpenAI, ant: anthropic.Anthropic, line_ending: str
) -> None:
    text = "naïve café 漢字 ✓ 🎉 done"
    provider.default = Scenario(
        text=text, tool_calls=(ToolCall("f", {"x": "ü"}),), line_ending=line_ending, slice_sizes=(1, 3, 7, 13)
    )
    with oai.chat.completions.stream(model="m", messages=[USER], stream_options={"include_usage": True}) as stream:
        completion = stream.get_final_completion()
    assert completion.choices[0].message.content == text
    assert completion.usage is not None
    with oai.responses.stream(model="m", input="x") as responses_stream:
        assert responses_stream.get_final_response().output_text == text
    with ant.messages.stream(model="m", max_tokens=5, messages=[USER]) as messages_stream:
        message = messages_stream.get_final_message()
    assert message.content[0].text == text  # type: ignore[union-attr]
    assert message.content[1].input == {"x": "ü"}  # type: ignore[union-attr]


def test_raw_line_endings(provider: SimulatedProvider, http: httpx.Client) -> None:
    provider.default = Scenario(text="a", line_ending="\r\n")
    raw = http.post("/v1/messages", json={"model": "m", "stream": True}).content
    assert raw.startswith(b"event: message_start\r\ndata: {")
    assert raw.endswith(b'event: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n')
    assert b"\n" not in raw.replace(b"\r\n", b"")


async def test_in_process_with_an_asgi_transport() -> None:
    """No server needed: the SDKs' own HTTP client (httpx2) can call the app in-process."""
    import httpx2

    provider = SimulatedProvider(default=Scenario(text="in process ✓", chunk_gap=0.001))
    transport = httpx2.ASGITransport(app=provider)
    http_client = httpx2.AsyncClient(transport=transport)
    async with openai.AsyncOpenAI(base_url="http://sim/v1", api_key="x", http_client=http_client) as client:
        stream = await client.chat.completions.create(model="m", messages=[USER], stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == "in process ✓"
    assert [r.api for r in provider.requests] == ["openai_chat"]
