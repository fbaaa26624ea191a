"""What a call costs, and what it may cost at worst, in USD: genai-prices' offline data plus user overrides."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from llmguard.record import Usage
from llmguard.settings import ModelPrice

logger = logging.getLogger("llmguard")

# Our provider labels (OpenTelemetry GenAI values) to genai-prices provider ids.
_PRICE_PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure.ai.openai": "azure",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "groq": "groq",
    "deepseek": "deepseek",
    "mistral_ai": "mistral",
    "x_ai": "x-ai",
}

# A request body is JSON: its byte length over 3 over-estimates the prompt's tokens for English (about 4
# characters a token) and stays above them for CJK text (3 bytes a character, about one token each), so a
# reservation made from it is an upper bound on the input cost.
BYTES_PER_TOKEN_ESTIMATE = 3


def estimate_input_tokens(body_size: int) -> int:
    return max(1, math.ceil(body_size / BYTES_PER_TOKEN_ESTIMATE))


class Prices:
    def __init__(self, overrides: Mapping[str, ModelPrice]) -> None:
        self._overrides = dict(overrides)
        self._unpriced: set[tuple[str, str]] = set()

    def cost(self, provider: str, model: str, usage: Usage) -> float | None:
        """USD for this usage, or None when no price is known for the model."""
        override = self._overrides.get(model)
        if override is not None:
            return _override_cost(override, usage)
        key = (provider, model)
        if key in self._unpriced:
            return None
        from genai_prices import Usage as PriceUsage
        from genai_prices import calc_price

        price_usage = PriceUsage(
            input_tokens=usage.total_input,
            cache_read_tokens=usage.cache_read,
            cache_write_tokens=usage.cache_write,
            output_tokens=usage.output,
        )
        try:
            result = calc_price(price_usage, model, provider_id=_PRICE_PROVIDERS.get(provider, provider))
        except LookupError:
            try:  # a compatible server under another host still names a known model
                result = calc_price(price_usage, model)
            except LookupError:
                self._unpriced.add(key)
                return None
        return float(result.total_price)

    def estimate(self, provider: str, model: str, input_tokens: int, max_output_tokens: int) -> float | None:
        """The worst-case cost of a call: its whole estimated input uncached, plus every output token allowed."""
        return self.cost(provider, model, Usage(input=input_tokens, output=max_output_tokens))

    def warm(self) -> None:
        """Load the price snapshot now rather than inside the first metered call."""
        self.cost("openai", "gpt-4o-mini", Usage(input=1))


def _override_cost(price: ModelPrice, usage: Usage) -> float:
    cache_read = price.input_mtok if price.cache_read_mtok is None else price.cache_read_mtok
    cache_write = price.input_mtok if price.cache_write_mtok is None else price.cache_write_mtok
    micro = (
        usage.input * price.input_mtok
        + usage.cache_read * cache_read
        + usage.cache_write * cache_write
        + usage.output * price.output_mtok
    )
    return micro / 1_000_000
