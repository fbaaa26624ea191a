"""The provider registry: which outbound requests are LLM calls, and which adapter reads them.

Detection is by request path, so base-URL overrides, Azure deployment paths and OpenAI-compatible servers work.
"""

from __future__ import annotations

from llmguard.providers.anthropic import AnthropicAdapter
from llmguard.providers.base import Adapter, RequestInfo, ResponseParser, apply_error_body
from llmguard.providers.openai_chat import OpenAIChatAdapter
from llmguard.providers.openai_responses import OpenAIResponsesAdapter

__all__ = ["ADAPTERS", "Adapter", "RequestInfo", "ResponseParser", "apply_error_body", "match", "provider_name"]

ADAPTERS: tuple[Adapter, ...] = (OpenAIChatAdapter(), OpenAIResponsesAdapter(), AnthropicAdapter())

# Well-known hosts name their provider (OpenTelemetry GenAI `gen_ai.provider.name` values); any other host is
# named after the wire format it speaks.
_HOST_SUFFIXES = (
    (".openai.azure.com", "azure.ai.openai"),
    ("api.openai.com", "openai"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("api.groq.com", "groq"),
    ("api.deepseek.com", "deepseek"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.x.ai", "x_ai"),
)


def match(method: str, path: str) -> Adapter | None:
    if method != "POST":
        return None
    for adapter in ADAPTERS:
        if adapter.matches(path):
            return adapter
    return None


def provider_name(adapter: Adapter, host: str) -> str:
    for suffix, name in _HOST_SUFFIXES:
        if host.endswith(suffix):
            return name
    return adapter.default_provider
