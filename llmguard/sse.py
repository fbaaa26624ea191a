"""An incremental, bytes-level Server-Sent Events parser.

It is fed the raw response chunks as they arrive and returns the events completed by each chunk. Lines are
split on CR, LF and CRLF at the byte level (never `str.splitlines`, which also breaks on U+2028 inside JSON), a CR
at the end of a chunk is carried over in case an LF follows, and each line is decoded only once it is whole, so a
multi-byte UTF-8 character split between chunks is never mangled. Field rules follow the WHATWG spec.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser"]

# A provider's terminal event (Responses `response.completed`) echoes the whole output and can be large; past this
# many bytes an event's data is dropped and the event is delivered with `truncated=True` so the caller can cope.
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class SSEEvent:
    event: str
    data: str
    id: str = ""
    truncated: bool = False


class SSEParser:
    __slots__ = ("_buffer", "_data", "_data_size", "_event", "_has_data", "_last_id", "_max_event_bytes", "_pending_cr")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = max_event_bytes
        self._buffer = bytearray()
        self._pending_cr = False
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0
        self._has_data = False
        self._last_id = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr or b"\r" in chunk:
            return self._feed_any(chunk)
        # The common case, LF line ends only: let bytes.split find the lines.
        lines = chunk.split(b"\n")
        if self._buffer:
            lines[0] = bytes(self._buffer) + lines[0]
            self._buffer.clear()
        tail = lines.pop()  # the unterminated rest (empty when the chunk ends with a line end)
        events: list[SSEEvent] = []
        for line in lines:
            if line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                self._has_data = True
                self._data_size += len(value) + 1
                if self._data_size <= self._max_event_bytes:
                    self._data.append(value.decode("utf-8", "replace"))
                continue
            event = self._line(line)
            if event is not None:
                events.append(event)
        if tail:
            self._keep(tail)
        return events

    def _feed_any(self, chunk: bytes) -> list[SSEEvent]:
        """Any mix of CR, LF and CRLF line ends, a CR at the end of one chunk and its LF at the start of the next."""
        events: list[SSEEvent] = []
        if not chunk:
            return events
        start = 0
        if self._pending_cr:
            self._pending_cr = False
            if chunk[0] == 0x0A:  # the LF of a CRLF split across chunks
                start = 1
        length = len(chunk)
        while start < length:
            cr = chunk.find(b"\r", start)
            lf = chunk.find(b"\n", start)
            if cr == -1 and lf == -1:
                self._keep(chunk[start:])
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, next_start = lf, lf + 1
            else:
                end = cr
                if cr + 1 < length:
                    next_start = cr + 2 if chunk[cr + 1] == 0x0A else cr + 1
                else:
                    next_start = length
                    self._pending_cr = True
            if self._buffer:
                self._buffer += chunk[start:end]
                line = bytes(self._buffer)
                self._buffer.clear()
            else:
                line = chunk[start:end]
            event = self._line(line)
            if event is not None:
                events.append(event)
            start = next_start
        return events

    def _keep(self, partial: bytes) -> None:
        """Buffer the start of a line; a line longer than an event may be is dropped (and its event marked
        truncated) so that a stream without line ends cannot grow memory."""
        self._buffer += partial
        if len(self._buffer) > self._max_event_bytes:
            self._buffer.clear()
            self._has_data = True
            self._data_size = self._max_event_bytes + 1

    def close(self) -> list[SSEEvent]:
        """End of stream: an unterminated last line is processed; an event with no blank line after it is not
        dispatched (per spec), but returned if it carried data, since providers sometimes omit the final blank line."""
        events: list[SSEEvent] = []
        if self._buffer:
            line = bytes(self._buffer)
            self._buffer.clear()
            event = self._line(line)
            if event is not None:
                events.append(event)
        if self._has_data:
            events.append(self._dispatch())
        return events

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            if self._has_data:
                return self._dispatch()
            self._event = ""  # an event with no data is not dispatched
            return None
        if line[0] == 0x3A:  # ":" comment
            return None
        colon = line.find(b":")
        if colon == -1:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":
            self._has_data = True
            self._data_size += len(value) + 1
            if self._data_size <= self._max_event_bytes:
                self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._last_id = value.decode("utf-8", "replace")
        # `retry:` and unknown fields are ignored.
        return None

    def _dispatch(self) -> SSEEvent:
        truncated = self._data_size > self._max_event_bytes
        event = SSEEvent(
            event=self._event or "message",
            data="" if truncated else self._data[0] if len(self._data) == 1 else "\n".join(self._data),
            id=self._last_id,
            truncated=truncated,
        )
        self._event = ""
        self._data = []
        self._data_size = 0
        self._has_data = False
        return event
