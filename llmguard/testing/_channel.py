"""Writing one HTTP response over ASGI: paced, optionally sliced, and quiet when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import Receive, Send

__all__ = ["Channel"]


class Channel:
    """The response side of one request (create it only after the request body has been read).

    Every `write` is one ``http.response.body`` message with ``more_body=True`` (so each event is flushed at
    once). With ``slice_sizes`` the bytes are cut into pieces whose sizes cycle through those sizes. Once the client
    has disconnected, writes and waits return False and nothing more is sent.
    """

    def __init__(self, receive: Receive, send: Send, slice_sizes: tuple[int, ...] = ()) -> None:
        self._send = send
        self._slice_sizes = slice_sizes
        self._slice_index = 0
        self._gone = False
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._gone = True
                return

    @property
    def disconnected(self) -> bool:
        return self._gone

    async def _emit(self, message: dict[str, Any]) -> bool:
        if self._gone:
            return False
        try:
            await self._send(message)
        except OSError:  # the client went away (servers differ in how they report it)
            self._gone = True
        return not self._gone

    async def start(self, status: int, headers: Mapping[str, str]) -> bool:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        return await self._emit({"type": "http.response.start", "status": status, "headers": raw})

    async def write(self, data: bytes) -> bool:
        """Send ``data`` now (in slices if configured); False once the client is gone."""
        if not self._slice_sizes:
            return await self._emit({"type": "http.response.body", "body": data, "more_body": True})
        start = 0
        while start < len(data):
            size = self._slice_sizes[self._slice_index % len(self._slice_sizes)]
            self._slice_index += 1
            if not await self._emit(
                {"type": "http.response.body", "body": data[start : start + size], "more_body": True}
            ):
                return False
            start += size
        return True

    async def sleep_until(self, deadline: float) -> bool:
        """Wait until ``deadline`` (a `time.monotonic` value); False if the client disconnects first."""
        delay = deadline - time.monotonic()
        if delay > 0 and not self._gone:
            await asyncio.wait({self._watcher}, timeout=delay)
        return not self._gone

    async def finish(self) -> None:
        """End the body."""
        await self._emit({"type": "http.response.body", "body": b"", "more_body": False})

    async def close(self) -> None:
        """Stop watching for a disconnect (always call this, e.g. in a ``finally``)."""
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher

    async def send_json(self, status: int, headers: Mapping[str, str], payload: Any) -> None:
        """A complete JSON response."""
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        full = {**headers, "content-type": "application/json", "content-length": str(len(body))}
        if await self.start(status, full):
            await self.write(body)
        await self.finish()
