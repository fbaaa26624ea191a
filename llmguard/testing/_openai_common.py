"""Pieces shared by the two OpenAI wire formats: error bodies, headers and usage numbers."""

from __future__ import annotations

import secrets
from typing import Any

from ._generation import Generation, new_id

__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_SSE",
    "error_body",
    "new_request_id",
    "obfuscation",
    "response_headers",
    "stream_error_message",
]

CONTENT_TYPE_SSE = "text/event-stream; charset=utf-8"
CONTENT_TYPE_JSON = "application/json"

# status -> (error.type, error.code, error.message)
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (simulated)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: sim-****. (simulated)"),
    403: ("request_forbidden", "unsupported_country_region_territory", "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: (
        "rate_limit_error",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM) in organization org-sim: Limit 3, Used 3, Requested 1.",
    ),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: (
        "service_unavailable_error",
        "server_is_overloaded",
        "The engine is currently overloaded, please try again later.",
    ),
    529: (
        "service_unavailable_error",
        "server_is_overloaded",
        "The engine is currently overloaded, please try again later.",
    ),
}

_STREAM_ERRORS = {
    "server_error": "The server had an error while processing your request. Sorry about that!",
    "rate_limit_exceeded": "Rate limit reached. Please try again later.",
    "service_unavailable_error": "The engine is currently overloaded, please try again later.",
}


def new_request_id() -> str:
    return "req_" + secrets.token_hex(16)


def error_body(status: int, message: str | None, request_id: str) -> dict[str, Any]:
    """The exact OpenAI error JSON for an HTTP status (the request id is only in the headers)."""
    default = ("invalid_request_error", None, "Invalid request.") if status < 500 else _ERRORS[500]
    kind, code, text = _ERRORS.get(status, default)
    return {"error": {"message": message or text, "type": kind, "param": None, "code": code}}


def stream_error_message(kind: str) -> str:
    return _STREAM_ERRORS.get(kind, "An error occurred while streaming the response.")


def response_headers(request_id: str, input_tokens: int, elapsed_ms: int, status: int) -> dict[str, str]:
    """Realistic OpenAI response headers (request id, versions and rate limits)."""
    return {
        "x-request-id": request_id,
        "openai-organization": "org-sim",
        "openai-project": "proj_sim",
        "openai-processing-ms": str(elapsed_ms),
        "openai-version": "2020-10-01",
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-remaining-tokens": str(max(0, 200000 - input_tokens)),
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-reset-tokens": f"{max(1, input_tokens // 200)}ms",
    }


def obfuscation(gen: Generation) -> dict[str, str]:
    """The ``obfuscation`` padding field, unless ``stream_options.include_obfuscation`` is false."""
    options = gen.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_obfuscation") is False:
        return {}
    return {"obfuscation": new_id("", secrets.randbelow(12) + 4)}
