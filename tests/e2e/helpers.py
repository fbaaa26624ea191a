from __future__ import annotations

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from prometheus_client import CollectorRegistry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist."""
    return registry.get_sample_value(name, labels) or 0.0


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    result = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                result += sample.value
    return result


def price(provider: str, model: str, *, input: int, output: int, cache_read: int = 0, cache_write: int = 0) -> float:
    """What genai-prices says the usage costs (`input` is the total input, cache included)."""
    usage = PriceUsage(
        input_tokens=input, output_tokens=output, cache_read_tokens=cache_read, cache_write_tokens=cache_write
    )
    return float(calc_price(usage, model, provider_id=provider).total_price)
