"""What every provider adapter provides: reading the request, and parsing the response as it streams."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from llmguard.errors import error_type_for_status
from llmguard.record import CallRecord
from llmguard.sse import SSEEvent


@dataclass(slots=True)
class RequestInfo:
    model: str
    stream: bool
    max_output_tokens: int | None
    digest: str  # sha256 of the request's messages

    @classmethod
    def read(cls, body: dict[str, Any], model: str, prompt: Any, *max_output_keys: str) -> RequestInfo:
        """`prompt` is what the digest covers: the messages (and system prompt) a content filter judged."""
        return cls(
            model=model,
            stream=body.get("stream") is True,
            max_output_tokens=first_int(body, *max_output_keys),
            digest=digest(prompt),
        )


class ResponseParser(Protocol):
    def event(self, event: SSEEvent) -> bool:
        """Feed one SSE event; return True when it carries content (a token, a tool-call fragment, a refusal)."""

    def body(self, obj: Any) -> None:
        """Feed a whole non-streamed JSON response body."""


class Adapter(Protocol):
    api: str
    default_provider: str

    def matches(self, path: str) -> bool: ...

    def read_request(self, path: str, body: Any) -> RequestInfo | None:
        """What the request asks for, or None when its body is not shaped like this API's (then it is not an
        LLM call at all, and passes through untouched)."""

    def parser(self, record: CallRecord) -> ResponseParser: ...


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def first_int(body: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = int_or_none(body.get(key))
        if value is not None:
            return value
    return None


def deployment(path: str) -> str | None:
    """Azure OpenAI names the deployment in the path (`/openai/deployments/{name}/…`), not the model in the body."""
    marker = "/deployments/"
    start = path.find(marker)
    if start == -1:
        return None
    name = path[start + len(marker) :].split("/", 1)[0]
    return name or None


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def apply_error_body(record: CallRecord, status: int, obj: Any) -> None:
    """An HTTP error response: OpenAI `{"error": {"type", "code"}}` or Anthropic `{"type": "error", "error": {...}}`.
    The most specific of the provider's `code`, `type` and `status` decides the error type."""
    error = obj.get("error") if isinstance(obj, dict) else None
    raw = [error.get(key) for key in ("code", "type", "status")] if isinstance(error, dict) else []
    codes = [str(code) for code in raw if isinstance(code, str | int) and code != ""]
    message = error.get("message") if isinstance(error, dict) else None
    message = message if isinstance(message, str) else None
    fallback = error_type_for_status(status, None, message)
    for code in codes:
        kind = error_type_for_status(status, code, message)
        if kind != fallback:
            record.set_error(kind, code)
            return
    record.set_error(fallback, codes[0] if codes else None)
