"""The incremental SSE parser, against the WHATWG rules and against httpx-sse as a reference decoder."""

from __future__ import annotations

from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from llmguard.sse import SSEEvent, SSEParser


def parse(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return [(event.event, event.data, event.id) for event in events]


def reference(data: bytes) -> list[tuple[str, str, str]]:
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    events = []
    for line in [*lines.decode(data.decode("utf-8")), *lines.flush()]:
        event = decoder.decode(line)
        if event is not None:
            events.append((event.event, event.data, event.id))
    return events


def test_fields_comments_and_multiline_data() -> None:
    stream = b": keep-alive\nevent: delta\nid: 7\ndata: a\ndata:b\nretry: 10\n\ndata: second\n\n"
    assert parse([stream]) == [("delta", "a\nb", "7"), ("message", "second", "7")]


def test_line_endings_cr_lf_crlf_mixed() -> None:
    stream = b"data: one\r\n\r\ndata: two\r\rdata: three\n\n"
    assert parse([stream]) == [("message", "one", ""), ("message", "two", ""), ("message", "three", "")]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    assert parse([b"data: x\r", b"\n\r", b"\n"]) == [("message", "x", "")]


def test_multibyte_character_split_inside_its_bytes() -> None:
    data = "data: 漢字 café\n\n".encode()
    cut = data.index("字".encode()) + 1
    assert parse([data[:cut], data[cut:]]) == [("message", "漢字 café", "")]


def test_event_without_data_is_not_dispatched() -> None:
    assert parse([b"event: ping\n\ndata: x\n\n"]) == [("message", "x", "")]


def test_id_with_nul_is_ignored() -> None:
    assert parse([b"id: a\x00b\ndata: x\n\n"]) == [("message", "x", "")]


def test_unterminated_last_event_is_returned_on_close() -> None:
    assert parse([b"data: tail"]) == [("message", "tail", "")]


def test_oversized_event_is_truncated_not_kept() -> None:
    parser = SSEParser(max_event_bytes=10)
    events = parser.feed(b"event: big\ndata: " + b"x" * 50 + b"\n\ndata: ok\n\n")
    assert [(e.event, e.data, e.truncated) for e in events] == [("big", "", True), ("message", "ok", False)]


_text = st.text(alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=20)
_field = st.sampled_from(["data", "event", "id", ": comment", "data"])
_ending = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 6))):
        for _ in range(draw(st.integers(1, 4))):
            field = draw(_field)
            line = field if field.startswith(":") else f"{field}:{draw(st.sampled_from(['', ' ']))}{draw(_text)}"
            parts.append(line + draw(_ending))
        ending = draw(_ending)  # the same twice: "\r" then "\n" would be one line end, not two
        parts.append("data: end" + ending + ending)  # every event carries data and is terminated
    return "".join(parts).encode()


@settings(max_examples=300, deadline=None)
@given(stream=sse_streams(), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_matches_reference_decoder_when_split_anywhere(stream: bytes, cuts: list[int]) -> None:
    points = sorted({min(cut, len(stream)) for cut in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert parse(chunks) == reference(stream)


def test_a_line_that_never_ends_cannot_grow_memory() -> None:
    parser = SSEParser(max_event_bytes=100)
    for _ in range(50):
        assert parser.feed(b"x" * 64) == []
    assert len(parser._buffer) <= 100
    events = parser.feed(b"\n\ndata: next\n\n")
    assert [(e.data, e.truncated) for e in events] == [("", True), ("next", False)]
