from __future__ import annotations

from typing import Any

import pytest

from llmguard.testing import BUILTIN_MODELS, Scenario, ToolCall
from llmguard.testing import __main__ as cli
from llmguard.testing._builtin import count_tool_results
from llmguard.testing._generation import Generation, encode_events, split_text
from llmguard.testing._scenario import apply_overrides


def test_split_text_keeps_words_and_multibyte_characters() -> None:
    text = "Hello from the simulated provider, naïve café 漢字 ✓"
    words = split_text(text, None)
    assert "".join(words) == text
    assert words[:2] == ["Hello", " from"]
    assert words[-2:] == [" 漢字", " ✓"]
    assert split_text(text, 3) == ["Hello from the", " simulated provider, naïve", " café 漢字 ✓"]
    assert split_text("a b", 4) == ["a", " b", " a", " b"]
    assert split_text("a b ", None) == ["a", " b "]
    assert split_text("", 5) == []
    assert split_text("abc", 0) == []


def test_generation_counts() -> None:
    scenario = Scenario(text="a b c", tokens_per_chunk=2, reasoning_tokens=4, tool_calls=(ToolCall("t", {"k": 1}),))
    gen = Generation.build(scenario, "m", {}, body_size=41)
    assert gen.delta_count == 3 + 2  # '{"k": 1}' is split in two fragments
    assert gen.output_tokens == 5 * 2 + 4
    assert gen.input_tokens == 10
    assert gen.finish_reason == "tool_call"
    cached = Generation.build(Scenario(cache_read_tokens=30, cache_write_tokens=5), "m", {}, body_size=4)
    assert cached.input_tokens == 35  # never below the cached part


def test_encode_events() -> None:
    events: list[Any] = [("ping", {"type": "ping"}), (None, "[DONE]"), (None, "two\nlines")]
    assert encode_events(events, "\r\n") == (
        b'event: ping\r\ndata: {"type":"ping"}\r\n\r\ndata: [DONE]\r\n\r\ndata: two\r\ndata: lines\r\n\r\n'
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"line_ending": "\n\n"},
        {"slice_sizes": (0,)},
        {"output_tokens": -1},
        {"cache_read_tokens": -1},
        {"chunk_gap": -0.1},
        {"error_status": 200},
    ],
)
def test_scenario_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Scenario(**bad)


def test_apply_overrides() -> None:
    base = Scenario(first_token_delay=0.5)
    changed = apply_overrides(
        base, {"text": "x", "tool_calls": [{"name": "f", "arguments": {"a": 1}}], "slice_sizes": [2]}
    )
    assert changed.first_token_delay == 0.5
    assert changed.tool_calls == (ToolCall("f", {"a": 1}),)
    assert changed.slice_sizes == (2,)
    assert isinstance(hash(changed), int)  # scenarios stay hashable although arguments are dicts
    bads: list[dict[str, Any]] = [
        {"nope": 1},
        {"tool_calls": "f"},
        {"tool_calls": [{"arguments": {}}]},
        {"slice_sizes": ["a"]},
    ]
    for bad in bads:
        with pytest.raises(ValueError):
            apply_overrides(base, bad)


def test_count_tool_results() -> None:
    chat = {"messages": [{"role": "user"}, {"role": "assistant"}, {"role": "tool"}, {"role": "tool"}]}
    responses = {"input": [{"type": "function_call"}, {"type": "function_call_output"}, "junk"]}
    blocks = [{"type": "tool_result"}, {"type": "text"}]
    claude = {"messages": [{"role": "user", "content": blocks}, {"role": "user", "content": "plain"}]}
    assert count_tool_results("openai_chat", chat) == 2
    assert count_tool_results("openai_responses", responses) == 1
    assert count_tool_results("openai_responses", {"input": "just text"}) == 0
    assert count_tool_results("anthropic", claude) == 1
    assert set(BUILTIN_MODELS) == {"sim-loop", "sim-cycle", "sim-agent"}


def test_builtin_models_inherit_default_timing() -> None:
    base = Scenario(first_token_delay=0.3, chunk_gap=0.01)
    loop = BUILTIN_MODELS["sim-loop"](base, 5)
    assert (loop.first_token_delay, loop.chunk_gap, loop.text) == (0.3, 0.01, "")
    assert loop.tool_calls == (ToolCall("lookup", {"query": "same"}),)


def test_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    monkeypatch.setenv(cli.ENV_FIRST_TOKEN_DELAY, "0.25")
    monkeypatch.setenv(cli.ENV_CHUNK_GAP, "0.02")
    assert cli.main(["--port", "8111", "--chunk-gap", "0.05"]) == 0
    app, kwargs = calls[0]
    assert (kwargs["host"], kwargs["port"]) == ("127.0.0.1", 8111)
    assert (app.default.first_token_delay, app.default.chunk_gap) == (0.25, 0.05)
    monkeypatch.setenv(cli.ENV_CHUNK_GAP, "fast")
    with pytest.raises(SystemExit):
        cli.main([])
