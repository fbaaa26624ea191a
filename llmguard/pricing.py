"""What a call costs, and what it may cost at worst, in USD: genai-prices' offline data plus user overrides."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmguard.record import Usage
from llmguard.settings import ModelPrice

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
    """Cost lookups on the hot path. genai-prices matches a model name to its prices (slow: a few hundred µs);
    the match is done once per provider and model and cached, and the arithmetic is done here."""

    def __init__(self, overrides: Mapping[str, ModelPrice]) -> None:
        self._overrides = {model: _Rates.from_override(price) for model, price in overrides.items()}
        self._rates: dict[tuple[str, str], tuple[_Rates | None, float]] = {}

    def cost(self, provider: str, model: str, usage: Usage) -> float | None:
        """USD for this usage, or None when no price is known for the model."""
        rates = self._overrides.get(model) or self._lookup(provider, model)
        return None if rates is None else rates.cost(usage)

    def estimate(self, provider: str, model: str, input_tokens: int, max_output_tokens: int) -> float | None:
        """The worst-case cost of a call: its whole estimated input uncached, plus every output token allowed."""
        return self.cost(provider, model, Usage(input=input_tokens, output=max_output_tokens))

    def warm(self) -> None:
        """Load the price snapshot now rather than inside the first metered call."""
        self.cost("openai", "gpt-4o-mini", Usage(input=1))

    def _lookup(self, provider: str, model: str) -> _Rates | None:
        key = (provider, model)
        cached = self._rates.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        rates = _Rates.from_model_price(_find_model_price(provider, model))
        if len(self._rates) >= MAX_CACHED_MODELS:  # model names come from requests: never let them grow this
            self._rates.clear()
        # Prices can change on a date (genai-prices keeps their history): look again now and then.
        self._rates[key] = (rates, now + RATES_TTL_SECONDS)
        return rates


RATES_TTL_SECONDS = 3600.0
MAX_CACHED_MODELS = 2_000
_Price = tuple[float, tuple[tuple[int, float], ...]]  # USD per million tokens; then (threshold, price) tiers


@dataclass(frozen=True, slots=True)
class _Rates:
    input: _Price
    cache_read: _Price
    cache_write: _Price
    output: _Price

    def cost(self, usage: Usage) -> float:
        # Tiers are a cliff decided by the total input: past a threshold every token pays the tier's price.
        total_input = usage.total_input
        micro = (
            _applicable(self.input, total_input) * usage.input
            + _applicable(self.cache_read, total_input) * usage.cache_read
            + _applicable(self.cache_write, total_input) * usage.cache_write
            + _applicable(self.output, total_input) * usage.output
        )
        return micro / 1_000_000

    @classmethod
    def from_model_price(cls, price: Any) -> _Rates | None:
        if price is None or price.input_mtok is None or price.output_mtok is None:
            return None
        input_price = _price(price.input_mtok)
        # A cache bucket without its own price is billed as plain input.
        cache_read = _price(price.cache_read_mtok) if price.cache_read_mtok is not None else input_price
        cache_write = _price(price.cache_write_mtok) if price.cache_write_mtok is not None else input_price
        return cls(input_price, cache_read, cache_write, _price(price.output_mtok))

    @classmethod
    def from_override(cls, price: ModelPrice) -> _Rates:
        input_price = (price.input_mtok, ())
        cache_read = (price.cache_read_mtok, ()) if price.cache_read_mtok is not None else input_price
        cache_write = (price.cache_write_mtok, ()) if price.cache_write_mtok is not None else input_price
        return cls(input_price, cache_read, cache_write, (price.output_mtok, ()))


def _price(value: Any) -> _Price:
    tiers = getattr(value, "tiers", None)
    if tiers is None:
        return float(value), ()
    return float(value.base), tuple((int(tier.start), float(tier.price)) for tier in tiers)


def _applicable(price: _Price, total_input: int) -> float:
    base, tiers = price
    for start, tier_price in reversed(tiers):
        if total_input > start:
            return tier_price
    return base


def _find_model_price(provider: str, model: str) -> Any:
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    probe = PriceUsage(input_tokens=1, output_tokens=1)
    try:
        return calc_price(probe, model, provider_id=_PRICE_PROVIDERS.get(provider, provider)).model_price
    except LookupError:
        pass
    try:  # a compatible server under another host may still serve a model genai-prices knows
        return calc_price(probe, model).model_price
    except LookupError:
        return None
