"""`CallMeter`: watches one response's bytes go by, times them, parses them, and finalises the call once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from time import perf_counter

from llmguard.errors import error_type_for_exception
from llmguard.ledger import Call, Ledger
from llmguard.providers import Adapter, apply_error_body
from llmguard.sse import SSEEvent, SSEParser

logger = logging.getLogger("llmguard")

# Transport errors that mean the request never left: nothing can have been generated, so nothing is charged.
NOT_SENT = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol", "ProxyError"})

# A non-streamed body is kept (as a copy, while the caller gets the bytes as they come) only up to this size.
MAX_JSON_BODY = 8 * 1024 * 1024


class CallMeter:
    __slots__ = ("_body", "_call", "_finished", "_last_chunk_at", "_ledger", "_parser", "_parsing", "_sse")

    def __init__(self, ledger: Ledger, call: Call, adapter: Adapter) -> None:
        self._ledger = ledger
        self._call = call
        self._parser = adapter.parser(call.record)
        self._sse: SSEParser | None = None
        self._body: bytearray | None = None
        self._parsing = True
        self._last_chunk_at: float | None = None
        self._finished = False

    @property
    def call(self) -> Call:
        return self._call

    def response(self, status: int, headers: Mapping[str, str]) -> None:
        record = self._call.record
        record.status_code = status
        hint = headers.get("x-should-retry")
        if hint in ("true", "false"):
            record.should_retry = hint == "true"
        if status < 400 and "text/event-stream" in headers.get("content-type", ""):
            self._sse = SSEParser()
            record.stream = True
        else:
            self._body = bytearray()
            record.stream = False

    def chunk(self, data: bytes) -> None:
        now = perf_counter()
        self._last_chunk_at = now
        if not self._parsing:
            return
        try:
            if self._sse is not None:
                for event in self._sse.feed(data):
                    self._event(event, now)
            elif self._body is not None:
                self._body += data
                if len(self._body) > MAX_JSON_BODY:
                    self._unparsed(None)
        except Exception as exc:
            self._unparsed(exc)

    def _event(self, event: SSEEvent, now: float) -> None:
        record = self._call.record
        if self._parser.event(event):
            record.content_events += 1
            if record.first_token_at is None:
                record.first_token_at = now
        record.last_event_at = now

    def _unparsed(self, exc: Exception | None) -> None:
        """Our parser gave up: the bytes still pass through untouched; the call is counted as unparsed."""
        self._parsing = False
        self._sse = None
        self._body = None
        self._call.record.parsed = False
        if exc is not None:
            logger.warning("llmguard: could not parse a %s response: %r", self._call.record.api, exc)

    def finish(self, *, exhausted: bool = False, error: BaseException | None = None) -> None:
        """End of the call, whichever way it ended: the body was read to the end (`exhausted`), it raised or was
        cancelled (`error`), or it was closed or dropped before the end (neither). Runs once."""
        if self._finished:
            return
        self._finished = True
        call = self._call
        record = call.record
        try:
            record.ended_at = self._last_chunk_at if exhausted and self._last_chunk_at else perf_counter()
            if self._parsing and exhausted:  # a body cut short ends in a partial event: nothing to read there
                self._parse_rest()
            if error is not None and record.outcome != "error":
                if isinstance(error, asyncio.CancelledError | GeneratorExit):
                    record.outcome = "cancelled"
                else:
                    kind = error_type_for_exception(error)
                    record.set_error("stream_interrupted" if kind in ("connection", "other") else kind)
            elif record.outcome == "error":
                pass
            elif not exhausted and not record.terminal:
                record.outcome = "cancelled"  # the caller stopped reading before the end
            elif record.stream and record.parsed and not record.terminal:
                record.set_error("stream_interrupted")  # the body ended before the provider's final event
        except Exception as exc:
            logger.warning("llmguard: could not finalise a call: %r", exc)
        try:
            self._ledger.close(call)
        except Exception as exc:
            logger.warning("llmguard: could not account a call: %r", exc)

    def failed(self, error: BaseException) -> None:
        """The request raised before any response (refused connection, timeout, cancellation)."""
        record = self._call.record
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            record.outcome = "cancelled"
        else:
            kind = error_type_for_exception(error)
            record.set_error("connection" if kind in ("stream_interrupted", "other") else kind)
            record.sent = type(error).__name__ not in NOT_SENT
        self._finished = True
        record.ended_at = perf_counter()
        try:
            self._ledger.close(self._call)
        except Exception as exc:
            logger.warning("llmguard: could not account a call: %r", exc)

    def abandon(self) -> None:
        """The response object was garbage-collected without being read or closed."""
        self.finish()

    def _parse_rest(self) -> None:
        record = self._call.record
        try:
            if self._sse is not None:
                now = perf_counter()
                for event in self._sse.close():
                    self._event(event, now)
            elif self._body is not None:
                body = bytes(self._body)
                self._body = None
                obj = json.loads(body) if body else None
                status = record.status_code or 0
                if status >= 400:
                    apply_error_body(record, status, obj)
                else:
                    self._parser.body(obj)
        except Exception as exc:
            self._unparsed(exc)
