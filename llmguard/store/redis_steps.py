"""What the Redis store sends to the server, and the drivers that send it.

Each operation of the store is written once, as a generator of steps: it yields what to send (a Lua script to run, a
plain command, or a list of independent ones to pipeline) and gets the replies back. `run_steps` drives one on an
async client and `run_steps_sync` on a sync one. Scripts run by EVALSHA and are loaded again when the server answers
NOSCRIPT (a restarted or failed-over server, or SCRIPT FLUSH).
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final, TypeVar, cast

from redis.exceptions import NoScriptError, RedisClusterException, RedisError

T = TypeVar("T")

# What Redis raises when it fails (cluster errors are not `RedisError`s).
FAILURES: Final = (RedisError, RedisClusterException)


class Script:
    """A Lua script from `store/lua`, behind the shared prelude; run by EVALSHA, loaded again on NOSCRIPT."""

    def __init__(self, name: str) -> None:
        folder = files("llmguard.store") / "lua"
        self.name = name
        self.source = (folder / "prelude.lua").read_text("utf-8") + (folder / f"{name}.lua").read_text("utf-8")
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


SESSION_RESERVE = Script("session_reserve")
WINDOW_RESERVE = Script("window_reserve")
CALL_RESERVE = Script("call_reserve")
RELEASE = Script("release")
SESSION_SETTLE = Script("session_settle")
WINDOW_SETTLE = Script("window_settle")
CALL_SETTLE = Script("call_settle")
SESSION_GET = Script("session_get")
SESSION_END = Script("session_end")
ACTIVE = Script("active")
INDEX_TRIM = Script("index_trim")


@dataclass(frozen=True, slots=True)
class Eval:
    """Run a script on `keys` (all in one hash slot) with `args`."""

    script: Script
    keys: Sequence[str]
    args: Sequence[str | int | bytes]


@dataclass(frozen=True, slots=True)
class Command:
    args: tuple[str | int | float | bytes, ...]


# One step: a script, a command, or a list of independent ones sent in one pipeline (the reply is then a list).
Step = Eval | Command | list[Eval | Command]
# An operation: yields steps, receives their replies, returns its result.
Steps = Generator[Step, Any, T]


async def run_steps(client: Any, steps: Steps[T]) -> T:
    """Run an operation on an async client. A Redis failure is thrown into the operation at the step that failed,
    so that it can give back what it holds before it re-raises."""
    try:
        step = next(steps)
        while True:
            try:
                reply = await _execute(client, step)
            except FAILURES as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(reply)
    except StopIteration as stop:
        return cast(T, stop.value)
    finally:
        steps.close()


def run_steps_sync(client: Any, steps: Steps[T]) -> T:
    """`run_steps` on a sync client."""
    try:
        step = next(steps)
        while True:
            try:
                reply = _execute_sync(client, step)
            except FAILURES as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(reply)
    except StopIteration as stop:
        return cast(T, stop.value)
    finally:
        steps.close()


async def _execute(client: Any, step: Step) -> Any:
    if isinstance(step, list):
        async with client.pipeline(transaction=False) as pipe:
            for one in step:
                _queue(pipe, one)
            replies = await pipe.execute(raise_on_error=False)
        return [await _again(client, one, reply) if isinstance(reply, Exception) else reply
                for one, reply in zip(step, replies, strict=True)]  # fmt: skip
    if isinstance(step, Command):
        return await client.execute_command(*step.args)
    script, keys = step.script, step.keys
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *step.args)
    except NoScriptError:
        await client.script_load(script.source)
        return await client.evalsha(script.sha, len(keys), *keys, *step.args)


async def _again(client: Any, step: Eval | Command, error: Exception) -> Any:
    if isinstance(error, NoScriptError):  # the script did not run: load it and run it alone
        return await _execute(client, step)
    raise error


def _execute_sync(client: Any, step: Step) -> Any:
    if isinstance(step, list):
        with client.pipeline(transaction=False) as pipe:
            for one in step:
                _queue(pipe, one)
            replies = pipe.execute(raise_on_error=False)
        return [_again_sync(client, one, reply) if isinstance(reply, Exception) else reply
                for one, reply in zip(step, replies, strict=True)]  # fmt: skip
    if isinstance(step, Command):
        return client.execute_command(*step.args)
    script, keys = step.script, step.keys
    try:
        return client.evalsha(script.sha, len(keys), *keys, *step.args)
    except NoScriptError:
        client.script_load(script.source)
        return client.evalsha(script.sha, len(keys), *keys, *step.args)


def _again_sync(client: Any, step: Eval | Command, error: Exception) -> Any:
    if isinstance(error, NoScriptError):
        return _execute_sync(client, step)
    raise error


def _queue(pipe: Any, step: Eval | Command) -> None:
    if isinstance(step, Command):
        pipe.execute_command(*step.args)
    else:
        pipe.evalsha(step.script.sha, len(step.keys), *step.keys, *step.args)
