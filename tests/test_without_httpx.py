"""Legacy `httpx` is optional: llmguard imports, instruments and meters `httpx2` clients in a process where `httpx`
(and `httpx_sse`) cannot be imported at all."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from llmguard.testing import Scenario, SimulatedProvider
from tests.servers import ROOT

BLOCKED = ("httpx", "httpx_sse")

# Three ways `import httpx` can fail: not installed (Python's own marker for a module known to be absent), a finder
# that refuses it, and a broken install: httpx is found, but importing it raises ImportError (a missing or
# incompatible dependency).
BLOCKERS = {
    "not_installed": """
        for name in BLOCKED:
            sys.modules[name] = None
    """,
    "finder_refuses": """
        class NoHttpx:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoHttpx())
    """,
    "broken_install": """
        import importlib.abc
        import importlib.machinery

        class Broken(importlib.abc.Loader):
            def create_module(self, spec):
                return None

            def exec_module(self, module):
                raise ImportError(f"{module.__name__} is installed but cannot be imported")

        class FindsBrokenHttpx:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in BLOCKED:
                    return importlib.machinery.ModuleSpec(name, Broken())
                return None

        sys.meta_path.insert(0, FindsBrokenHttpx())
    """,
}


CHILD = """
import json
import sys

BLOCKED = {blocked!r}
{blocker}
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{{name}} could still be imported")

import httpx2
from prometheus_client import CollectorRegistry

import llmguard

registry = CollectorRegistry()
guard = llmguard.Guard(registry=registry)
guard.instrument()
try:
    with guard.session("no-httpx", feature="bare"), httpx2.Client() as client:
        response = client.post(
            {url!r} + "/v1/chat/completions",
            json={{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "hi"}}]}},
        )
        response.raise_for_status()
finally:
    guard.uninstrument()
    guard.close()
labels = {{"provider": "openai", "model": "gpt-4o-mini", "feature": "bare", "outcome": "success",
          "finish_reason": "stop"}}
state = guard.get_session_sync("no-httpx")
print(json.dumps({{
    "calls": registry.get_sample_value("llmguard_llm_calls_total", labels),
    "output_tokens": registry.get_sample_value(
        "llmguard_tokens_total", {{**{{k: labels[k] for k in ("provider", "model", "feature")}}, "type": "output"}}
    ),
    "session_calls": state.llm_calls if state is not None else None,
    "imported": sorted(name for name in BLOCKED if sys.modules.get(name) is not None),
    "httpx_in_sys_modules": "httpx" in sys.modules,
}}))
"""


@pytest.mark.parametrize("blocker", sorted(BLOCKERS))
def test_metering_works_without_httpx(provider: SimulatedProvider, provider_url: str, blocker: str) -> None:
    provider.default = Scenario(output_tokens=7)
    code = CHILD.format(blocked=BLOCKED, blocker=textwrap.dedent(BLOCKERS[blocker]), url=provider_url)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["calls"] == 1
    assert report["output_tokens"] == 7
    assert report["session_calls"] == 1
    assert report["imported"] == []
    if blocker != "not_installed":  # (that one marks the name in sys.modules as absent)
        assert report["httpx_in_sys_modules"] is False
    assert len(provider.requests) == 1
