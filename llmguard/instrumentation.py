"""`instrument()`: meter every httpx2 and httpx client the application builds, with no change at its call sites.

The default transports' request methods are replaced, process-wide, by ones that route through the active guard.
That covers the clients inside `openai.AsyncOpenAI()` and `anthropic.AsyncAnthropic()` built with default
arguments, and any client the application builds itself.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from typing import TYPE_CHECKING, Any

from llmguard.transport import handle_async, handle_sync

if TYPE_CHECKING:
    from llmguard.ledger import Ledger

_lock = threading.Lock()
_active: Ledger | None = None
_originals: list[tuple[type[Any], str, Any]] = []


def _libraries() -> list[Any]:
    libraries = [importlib.import_module("httpx2")]
    # Legacy httpx is optional: not installed, or installed but broken, it is simply not instrumented.
    with contextlib.suppress(ImportError):
        libraries.append(importlib.import_module("httpx"))
    return libraries


def instrument(ledger: Ledger) -> None:
    """Route every default transport through `ledger`. Idempotent; a second guard replaces the first."""
    global _active
    with _lock:
        _active = ledger
        if _originals:
            return
        for lib in _libraries():
            async_class, sync_class = lib.AsyncHTTPTransport, lib.HTTPTransport
            async_original = async_class.handle_async_request
            sync_original = sync_class.handle_request
            _originals.append((async_class, "handle_async_request", async_original))
            _originals.append((sync_class, "handle_request", sync_original))
            async_class.handle_async_request = _async_method(async_original)
            sync_class.handle_request = _sync_method(sync_original)


def uninstrument(ledger: Ledger | None = None) -> None:
    """Restore the original transports (only if `ledger` is the one instrumented, when given). Idempotent."""
    global _active
    with _lock:
        if ledger is not None and _active is not ledger:
            return
        _active = None
        for cls, name, original in _originals:
            setattr(cls, name, original)
        _originals.clear()


def _async_method(original: Any) -> Any:
    async def handle_async_request(self: Any, request: Any) -> Any:
        ledger = _active
        if ledger is None:
            return await original(self, request)
        return await handle_async(ledger, request, lambda r: original(self, r))

    return handle_async_request


def _sync_method(original: Any) -> Any:
    def handle_request(self: Any, request: Any) -> Any:
        ledger = _active
        if ledger is None:
            return original(self, request)
        return handle_sync(ledger, request, lambda r: original(self, r))

    return handle_request
