"""Our cached price arithmetic agrees with genai-prices' own calculation, tiers and cache buckets included."""

from __future__ import annotations

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from llmguard import ModelPrice
from llmguard.pricing import Prices, estimate_input_tokens
from llmguard.record import Usage

CASES = [
    ("openai", "gpt-4o-mini", Usage(input=1000, cache_read=500, output=300)),
    ("openai", "gpt-4.1", Usage(input=12_000, cache_read=8_000, output=2_000, reasoning=100)),
    ("openai", "o3", Usage(input=50, output=5_000, reasoning=4_000)),
    ("anthropic", "claude-sonnet-4-5", Usage(input=1_000, cache_read=8_000, cache_write=1_000, output=700)),
    ("anthropic", "claude-sonnet-4-5", Usage(input=150_000, cache_read=60_000, cache_write=5_000, output=900)),
    ("anthropic", "claude-3-5-haiku-latest", Usage(input=10, output=10)),
]


@pytest.mark.parametrize(("provider", "model", "usage"), CASES)
def test_cost_matches_genai_prices(provider: str, model: str, usage: Usage) -> None:
    expected = calc_price(
        PriceUsage(
            input_tokens=usage.total_input,
            cache_read_tokens=usage.cache_read,
            cache_write_tokens=usage.cache_write,
            output_tokens=usage.output,
        ),
        model,
        provider_id=provider,
    ).total_price
    assert Prices({}).cost(provider, model, usage) == pytest.approx(float(expected), rel=1e-12)


def test_tier_cliff_applies_above_the_threshold() -> None:
    prices = Prices({})
    below = prices.cost("anthropic", "claude-sonnet-4-5", Usage(input=200_000, output=1))
    above = prices.cost("anthropic", "claude-sonnet-4-5", Usage(input=200_001, output=1))
    assert below is not None and above is not None
    assert above / 200_001 > 1.5 * below / 200_000


def test_unknown_model_has_no_price_and_overrides_price_it() -> None:
    assert Prices({}).cost("openai", "my-fine-tune-xyz", Usage(input=10, output=10)) is None
    prices = Prices({"my-fine-tune-xyz": ModelPrice(input_mtok=2.0, output_mtok=8.0, cache_read_mtok=0.5)})
    cost = prices.cost("openai", "my-fine-tune-xyz", Usage(input=1_000_000, cache_read=1_000_000, output=500_000))
    assert cost == pytest.approx(2.0 + 0.5 + 4.0)


def test_estimate_is_an_upper_bound_of_input_and_output() -> None:
    prices = Prices({})
    estimate = prices.estimate("openai", "gpt-4o-mini", estimate_input_tokens(3_000), 100)
    assert estimate == pytest.approx(prices.cost("openai", "gpt-4o-mini", Usage(input=1_000, output=100)))
