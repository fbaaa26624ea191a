from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from llmguard.cli import main
from llmguard.settings import GuardSettings
from llmguard.store.base import Caps
from llmguard.store.redis import RedisStore
from tests.store.helpers import reservation, settlement

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("LLMGUARD_REDIS_URL", "LLMGUARD_REDIS_PREFIX", "LLMGUARD_REDIS_CLUSTER"):
        monkeypatch.delenv(name, raising=False)
    value = f"llmguard-test-cli-{uuid.uuid4().hex}"
    yield value
    with redis.Redis.from_url(REDIS_URL) as client:
        for key in list(client.scan_iter(match=f"{value}:*")):
            client.delete(key)


@pytest.fixture
def sessions(prefix: str) -> Iterator[None]:
    store = RedisStore(GuardSettings(redis_url=REDIS_URL, redis_prefix=prefix, redis_timeout_seconds=2.0))
    try:
        for session, cost, tools in [("cheap", 0.125, []), ("dear", 1.5, ["a()", "a()"]), ("mid", 0.5, ["b()"])]:
            store.reserve_sync(reservation(f"c-{session}", session, usd=0.25))
            store.settle_sync(
                settlement(f"c-{session}", session, cost=cost, tokens={"input": 1000, "output": 200}, tools=tools)
            )
        store.reserve_sync(reservation("in-flight", "mid", usd=0.25))
        store.reserve_sync(reservation("over", "dear", usd=1.0, caps=Caps(session_budget_usd=2.0)))
    finally:
        store.close()
    yield


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_top_lists_sessions_by_spend(sessions: None, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--redis-url", REDIS_URL, "--redis-prefix", prefix, "sessions", "top")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "SESSION", "SPENT_USD", "HELD_USD", "TOKENS", "LLM_CALLS", "TOOL_CALLS", "BLOCKED", "LAST_ACTIVITY",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["dear", "mid", "cheap"]
    assert lines[1].split()[1:7] == ["1.500000", "0.000000", "1200", "1", "2", "-"]  # a denial blocks no session
    assert lines[2].split()[1:3] == ["0.500000", "0.250000"]
    # Columns line up: every spent amount ends where its header does.
    end = lines[0].index("SPENT_USD") + len("SPENT_USD")
    assert all(line[end - 8 : end] == line.split()[1][-8:] for line in lines[1:])


def test_top_limits_and_prints_json(sessions: None, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "sessions", "top", "-n", "2", "--json", "--redis-url", REDIS_URL, "--redis-prefix", prefix
    )
    assert code == 0
    records = json.loads(out)
    assert [(r["session_id"], r["spent_usd"]) for r in records] == [("dear", 1.5), ("mid", 0.5)]
    assert records[0]["tokens"] == {"input": 1000, "output": 200}
    assert records[0]["last_activity"].endswith("Z")


def test_show_prints_one_session(
    sessions: None, prefix: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMGUARD_REDIS_URL", REDIS_URL)  # the environment configures it too
    monkeypatch.setenv("LLMGUARD_REDIS_PREFIX", prefix)
    code, out, _ = run(capsys, "sessions", "show", "mid")
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert rows["session"] == "mid"
    assert rows["spent_usd"] == "0.500000"
    assert rows["held_usd"] == "0.250000"
    assert rows["tokens.input"] == "1000"
    assert rows["tokens.output"] == "200"
    assert rows["llm_calls"] == "1"
    assert rows["tool_calls"] == "1"
    assert rows["blocked"] == "-"
    assert rows["last_activity"].endswith("Z")
    values = [line.index(value) for line, value in zip(out.splitlines(), rows.values(), strict=True)]
    assert len(set(values)) == 1  # one column of values

    code, out, _ = run(capsys, "--json", "sessions", "show", "dear")
    assert code == 0
    record = json.loads(out)
    assert (record["session_id"], record["blocked_reason"], record["tool_calls"]) == ("dear", None, 2)
    # Under a session budget it has used up, the session shows as blocked.
    monkeypatch.setenv("LLMGUARD_SESSION_BUDGET_USD", "1.5")
    code, out, _ = run(capsys, "--json", "sessions", "show", "dear")
    assert json.loads(out)["blocked_reason"] == "session_budget"


def test_show_an_unknown_session(sessions: None, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "sessions", "show", "nobody\x1b[2J", "--redis-url", REDIS_URL, "--redis-prefix", prefix
    )
    assert code == 1
    assert out == ""
    assert "no session" in err and "\x1b" not in err


def test_without_redis(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "sessions", "top")
    assert code == 2
    assert "LLMGUARD_REDIS_URL" in err and out == ""


def test_an_unreachable_redis(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "sessions", "top", "--redis-url", "redis://127.0.0.1:1/0", "--timeout", "0.2")
    assert code == 1
    assert "Redis failed" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sessions"])
    assert exit_info.value.code == 2
