"""Guarded transports for httpx2 and legacy httpx, async and sync.

Every outbound request goes through `handle_async` / `handle_sync`: a request that is not an LLM call passes
through untouched; an LLM call is admitted against the caps (or refused before it leaves the process), sent, and
its response body is handed back wrapped in a metered byte stream that passes every byte through unchanged.
httpx and httpx2 share the transport interface, so one code path serves both; only the byte-stream base classes
differ, and the clients check those with `isinstance`, so the metered stream subclasses the right one.
"""

from __future__ import annotations

import json
import logging
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import cache
from time import perf_counter
from typing import Any

import httpx2

from llmguard import providers
from llmguard.errors import GuardBlocked
from llmguard.ledger import Ledger
from llmguard.meter import CallMeter

logger = logging.getLogger("llmguard")

METERED = "llmguard.metered"  # request extension: an outer guard already meters this request

AsyncSend = Callable[[Any], Awaitable[Any]]
SyncSend = Callable[[Any], Any]


async def handle_async(ledger: Ledger, request: Any, send: AsyncSend) -> Any:
    started = perf_counter()
    adapter = providers.match(request.method, request.url.path)
    if adapter is None or request.extensions.get(METERED):
        return await send(request)
    try:
        meter = _meter(ledger, adapter, request, await request.aread(), started)
        if meter is not None:
            await ledger.admit(meter.call)
    except GuardBlocked:
        raise
    except Exception as exc:  # our machinery failed: the call goes ahead unmetered
        logger.warning("llmguard: could not meter a request, passing it through: %r", exc)
        return await send(request)
    if meter is None:
        return await send(request)
    try:
        response = await send(request)
    except BaseException as exc:
        meter.failed(exc)
        raise
    return _metered(response, meter, _async_stream_class(_library(request)))


def handle_sync(ledger: Ledger, request: Any, send: SyncSend) -> Any:
    started = perf_counter()
    adapter = providers.match(request.method, request.url.path)
    if adapter is None or request.extensions.get(METERED):
        return send(request)
    try:
        meter = _meter(ledger, adapter, request, request.read(), started)
        if meter is not None:
            ledger.admit_sync(meter.call)
    except GuardBlocked:
        raise
    except Exception as exc:
        logger.warning("llmguard: could not meter a request, passing it through: %r", exc)
        return send(request)
    if meter is None:
        return send(request)
    try:
        response = send(request)
    except BaseException as exc:
        meter.failed(exc)
        raise
    return _metered(response, meter, _sync_stream_class(_library(request)))


def _meter(ledger: Ledger, adapter: providers.Adapter, request: Any, body: bytes, started: float) -> CallMeter | None:
    """A meter for the call, or None when the request is not an LLM call after all (its body is not the API's)."""
    try:
        info = adapter.read_request(request.url.path, json.loads(body))
    except ValueError:
        info = None
    if info is None:
        return None
    request.extensions[METERED] = True
    retries = request.headers.get("x-stainless-retry-count")
    try:
        retry_count = int(retries or "0")
    except ValueError:
        retry_count = 0
    provider = providers.provider_name(adapter, request.url.host)
    call = ledger.open(adapter, provider, info, body, retry_count)
    call.record.started_at = started
    call.record.sdk_retries = retries is not None
    return CallMeter(ledger, call, adapter)


def _metered(response: Any, meter: CallMeter, stream_class: type[Any]) -> Any:
    """Hand the response back with its body wrapped; if wrapping fails, the call is finalised and passed through."""
    try:
        meter.response(response.status_code, response.headers)
        response.stream = stream_class(response.stream, meter)
    except Exception as exc:
        logger.warning("llmguard: could not meter a response, passing it through: %r", exc)
        meter.finish()
    return response


class _MeteredAsyncStream:
    def __init__(self, inner: Any, meter: CallMeter | None) -> None:
        self._inner = inner
        self._meter = meter
        if meter is not None:
            weakref.finalize(self, meter.abandon)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        meter = self._meter
        if meter is None:
            async for chunk in self._inner:
                yield chunk
            return
        try:
            async for chunk in self._inner:
                meter.chunk(chunk)
                yield chunk
        except BaseException as exc:
            meter.finish(error=exc)
            raise
        meter.finish(exhausted=True)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._meter is not None:
                self._meter.finish()


class _MeteredSyncStream:
    def __init__(self, inner: Any, meter: CallMeter | None) -> None:
        self._inner = inner
        self._meter = meter
        if meter is not None:
            weakref.finalize(self, meter.abandon)

    def __iter__(self) -> Iterator[bytes]:
        meter = self._meter
        if meter is None:
            yield from self._inner
            return
        try:
            for chunk in self._inner:
                meter.chunk(chunk)
                yield chunk
        except BaseException as exc:
            meter.finish(error=exc)
            raise
        meter.finish(exhausted=True)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if self._meter is not None:
                self._meter.finish()


@cache
def _async_stream_class(library: str) -> type[_MeteredAsyncStream]:
    base = sys.modules[library].AsyncByteStream
    return type("MeteredAsyncByteStream", (_MeteredAsyncStream, base), {})


@cache
def _sync_stream_class(library: str) -> type[_MeteredSyncStream]:
    base = sys.modules[library].SyncByteStream
    return type("MeteredSyncByteStream", (_MeteredSyncStream, base), {})


def _library(obj: Any) -> str:
    """`httpx` or `httpx2`: which library a request or a transport belongs to (subclasses included)."""
    if isinstance(obj, httpx2.Request | httpx2.AsyncBaseTransport | httpx2.BaseTransport):
        return "httpx2"
    legacy = sys.modules.get("httpx")
    if legacy is not None and isinstance(obj, legacy.Request | legacy.AsyncBaseTransport | legacy.BaseTransport):
        return "httpx"
    return "httpx2"  # a duck-typed transport: httpx2 objects are what it will be handed


def _convert_request(request: Any, library: str, body: bytes) -> Any:
    lib = sys.modules[library]
    return lib.Request(
        request.method, str(request.url), headers=request.headers.raw, content=body, extensions=request.extensions
    )


def _convert_response(response: Any, library: str) -> Any:
    lib = sys.modules[library]
    stream_class = _async_stream_class(library) if hasattr(response.stream, "__aiter__") else None
    stream = (stream_class or _sync_stream_class(library))(response.stream, None)
    return lib.Response(
        response.status_code, headers=response.headers.raw, stream=stream, extensions=response.extensions
    )


class AsyncGuardedTransport(httpx2.AsyncBaseTransport):
    """Wraps an httpx2 or httpx async transport; usable inside an `httpx2.AsyncClient` or an `httpx.AsyncClient`."""

    def __init__(self, ledger: Ledger, inner: Any) -> None:
        self._ledger = ledger
        self._inner = inner
        self._inner_library = _library(inner)

    async def handle_async_request(self, request: Any) -> Any:
        return await handle_async(self._ledger, request, self._send)

    async def _send(self, request: Any) -> Any:
        library = _library(request)
        if library == self._inner_library:
            return await self._inner.handle_async_request(request)
        body = await request.aread()
        response = await self._inner.handle_async_request(_convert_request(request, self._inner_library, body))
        return _convert_response(response, library)

    async def aclose(self) -> None:
        await self._inner.aclose()


class GuardedTransport(httpx2.BaseTransport):
    """Wraps an httpx2 or httpx transport; usable inside an `httpx2.Client` or an `httpx.Client`."""

    def __init__(self, ledger: Ledger, inner: Any) -> None:
        self._ledger = ledger
        self._inner = inner
        self._inner_library = _library(inner)

    def handle_request(self, request: Any) -> Any:
        return handle_sync(self._ledger, request, self._send)

    def _send(self, request: Any) -> Any:
        library = _library(request)
        if library == self._inner_library:
            return self._inner.handle_request(request)
        body = request.read()
        response = self._inner.handle_request(_convert_request(request, self._inner_library, body))
        return _convert_response(response, library)

    def close(self) -> None:
        self._inner.close()
