"""The exceptions a guarded call can raise, and the fixed vocabulary llmguard reports errors with."""

from __future__ import annotations

import sys
from typing import Final, Literal

__all__ = ["BudgetExceeded", "GuardBlocked", "LoopDetected"]

ErrorType = Literal[
    "rate_limit",
    "quota_exhausted",
    "timeout",
    "content_filter",
    "server_error",
    "overloaded",
    "context_length",
    "auth",
    "bad_request",
    "connection",
    "stream_interrupted",
    "other",
]

BlockReason = Literal[
    "session_budget",
    "feature_daily_budget",
    "daily_budget",
    "session_llm_calls",
    "session_tool_calls",
    "session_tokens",
    "loop_detected",
    "unpriced_model",
    "store_unavailable",
]

# Cost caps answer 402 Payment Required; count caps, loops and store outages answer 429.
COST_REASONS: Final = frozenset({"session_budget", "feature_daily_budget", "daily_budget", "unpriced_model"})


class GuardBlocked(Exception):
    """An LLM call was refused before it reached the provider.

    It derives from no HTTP error class, so nothing treats it as a transient network failure. When raised from a
    transport it is also an instance of the official SDKs' base errors (see `raisable`): they re-raise those
    untouched, so the block reaches the caller at once, as itself, with no retry.
    """

    def __init__(
        self,
        reason: BlockReason,
        detail: str,
        *,
        session_id: str | None = None,
        spent_usd: float | None = None,
        limit_usd: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason: BlockReason = reason
        self.detail = detail
        self.session_id = session_id
        self.spent_usd = spent_usd
        self.limit_usd = limit_usd

    @property
    def status_code(self) -> int:
        return 402 if self.reason in COST_REASONS else 429

    def problem(self) -> dict[str, object]:
        """An RFC 9457 problem document describing the block."""
        return {
            "type": f"https://llmguard.dev/problems/{self.reason.replace('_', '-')}",
            "title": "LLM budget exceeded" if self.status_code == 402 else "LLM call limit reached",
            "status": self.status_code,
            "detail": self.detail,
            "reason": self.reason,
            "session_id": self.session_id,
            "spent_usd": self.spent_usd,
            "limit_usd": self.limit_usd,
        }


class BudgetExceeded(GuardBlocked):
    """A cost, call, token or tool-call cap would be exceeded by this call."""


class LoopDetected(GuardBlocked):
    """The session's agent keeps asking for the same tool calls."""


# The official SDKs re-raise their own base error untouched but wrap any other exception a transport raises (anthropic
# turns it into a retried APIConnectionError). A block is therefore raised as a subclass of the SDKs' base errors too.
_SDK_BASE_ERRORS = (("anthropic", "AnthropicError"), ("openai", "OpenAIError"))


def raisable(cls: type[GuardBlocked]) -> type[GuardBlocked]:
    """`cls`, extended with the base error class of every official SDK the process has imported."""
    bases = tuple(getattr(sys.modules[module], name) for module, name in _SDK_BASE_ERRORS if module in sys.modules)
    if not bases:
        return cls
    key = (cls, *bases)
    mixed = _mixed.get(key)
    if mixed is None:
        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        mixed = _mixed[key] = type(cls.__name__, (cls, *bases), namespace)
    return mixed


_mixed: dict[tuple[type[Exception], ...], type[GuardBlocked]] = {}

_QUOTA_CODES = frozenset({"insufficient_quota", "credit_balance_exhausted", "billing_error"})
_OVERLOADED_CODES = frozenset({"overloaded_error", "server_is_overloaded", "service_unavailable_error", "unavailable"})
_CONTEXT_MESSAGES = ("prompt is too long", "maximum context length", "context window", "too many tokens")


def error_type_for_status(status: int, code: str | None = None, message: str | None = None) -> ErrorType:
    """Map an HTTP error status and the provider's error type/code (OpenAI `code`/`type`, Anthropic `error.type`,
    Gemini `status`) to our fixed vocabulary. Anthropic reports an over-long prompt only in the message text."""
    code = (code or "").lower()
    if code in _QUOTA_CODES or code.endswith("spend_limit_reached"):
        return "quota_exhausted"
    if "context_length" in code or any(text in (message or "").lower() for text in _CONTEXT_MESSAGES):
        return "context_length"
    if code in _OVERLOADED_CODES:
        return "overloaded"
    if "content_filter" in code or "policy" in code:
        return "content_filter"
    if "timeout" in code or code == "deadline_exceeded":
        return "timeout"
    if "rate_limit" in code or code == "resource_exhausted":
        return "rate_limit"
    if status == 429:
        return "rate_limit"
    if status in (401, 403):
        return "auth"
    if status == 402:
        return "quota_exhausted"
    if status in (408, 504):
        return "timeout"
    if status in (503, 529):
        return "overloaded"
    if status >= 500:
        return "server_error"
    if 400 <= status < 500:
        return "bad_request"
    return "other"


def error_type_for_stream_error(code: str | None, message: str | None = None) -> ErrorType:
    """An error that arrived inside a 200 stream (OpenAI `error`, Anthropic `event: error`, Responses `error` or
    `response.failed`): the code decides; a request the provider rejected is a bad request, anything else is the
    server's failure."""
    if code and ("invalid" in code.lower() or code.lower() == "bad_request"):
        return "bad_request"
    return error_type_for_status(500, code, message)


def error_type_for_exception(exc: BaseException) -> ErrorType:
    """Classify a transport exception by name, so httpx and httpx2 exceptions are treated alike."""
    for cls in type(exc).__mro__:
        name = cls.__name__
        if name.endswith("Timeout") or name in {"TimeoutException", "TimeoutError"}:
            return "timeout"
        if name in {"ConnectError", "NetworkError", "RemoteProtocolError", "ConnectionError", "OSError"}:
            return "connection"
        if name in {"ReadError", "WriteError", "CloseError"}:
            return "stream_interrupted"
    return "other"
