"""Every Prometheus instrument llmguard exports, created once per registry, and their exposition."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from llmguard.record import CallRecord

__all__ = ["Metrics", "metrics_for"]

CALL_LABELS = ("provider", "model", "feature")
# OpenTelemetry GenAI advisory boundaries for durations and time to first chunk.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
RATE_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)
USD_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100)
COUNT_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
OTHER = "other"
MAX_LABEL_LENGTH = 128


class Metrics:
    def __init__(self, registry: CollectorRegistry, *, max_models: int = 50, max_features: int = 200) -> None:
        r = registry
        self.calls = Counter(
            "llmguard_llm_calls", "Logical LLM calls (SDK retries are not new calls).",
            (*CALL_LABELS, "outcome", "finish_reason"), registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "llmguard_time_to_first_token_seconds", "Time from sending a streamed call to its first content.",
            CALL_LABELS, buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.decode_rate = Histogram(
            "llmguard_output_tokens_per_second", "Output tokens over the time from first token to last event.",
            CALL_LABELS, buckets=RATE_BUCKETS, registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "llmguard_llm_call_duration_seconds", "Time from sending a call to its last byte.",
            (*CALL_LABELS, "stream"), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter("llmguard_tokens", "Tokens by type.", (*CALL_LABELS, "type"), registry=r)
        self.cost = Counter(
            "llmguard_cost_usd", "Cost of LLM calls in USD, from reported usage.", CALL_LABELS, registry=r
        )
        self.estimated_cost = Counter(
            "llmguard_estimated_cost_usd", "USD charged to budgets for calls whose usage never arrived (estimates).",
            CALL_LABELS, registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "llmguard_errors", "Failed LLM call attempts by error type.", (*CALL_LABELS, "error_type"), registry=r
        )
        self.cache = Counter(
            "llmguard_cache_requests", "Calls that read (hit) or did not read (miss) the prompt cache.",
            (*CALL_LABELS, "result"), registry=r,
        )  # fmt: skip
        self.tool_calls = Counter("llmguard_tool_calls", "Tool calls the model requested.", CALL_LABELS, registry=r)
        self.retries = Counter("llmguard_llm_retries", "SDK retry attempts of a logical call.", CALL_LABELS, registry=r)
        self.unparsed = Counter(
            "llmguard_unparsed_responses", "Responses llmguard could not parse (passed through).", CALL_LABELS,
            registry=r,
        )  # fmt: skip
        self.blocks = Counter(
            "llmguard_guard_blocks", "Calls refused before reaching the provider.", ("feature", "reason"), registry=r
        )
        self.loop_warnings = Counter(
            "llmguard_loop_warnings", "Sessions whose tool calls started to repeat.", ("feature",), registry=r
        )
        self.session_cost = Histogram(
            "llmguard_session_cost_usd", "Cost of an ended session.", buckets=USD_BUCKETS, registry=r
        )
        self.session_tool_calls = Histogram(
            "llmguard_session_tool_calls", "Tool calls of an ended session.", buckets=COUNT_BUCKETS, registry=r
        )
        self.session_llm_calls = Histogram(
            "llmguard_session_llm_calls", "LLM calls of an ended session.", buckets=COUNT_BUCKETS, registry=r
        )
        self.action_cost = Histogram(
            "llmguard_action_cost_usd", "LLM cost of one inbound request.", ("feature",), buckets=USD_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.active_sessions = Gauge(
            "llmguard_active_sessions", "Sessions active within the session TTL.", registry=r,
            multiprocess_mode="max",
        )  # fmt: skip
        self.store_errors = Counter(
            "llmguard_store_errors", "Failed budget-store operations.", ("operation",), registry=r
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._models = _BoundedLabel(max_models)
        self._features = _BoundedLabel(max_features)

    def feature(self, value: str) -> str:
        return self._features(value)

    def model(self, value: str) -> str:
        return self._models(value)

    def count_call(self, record: CallRecord, feature: str) -> None:
        """One logical call, with the outcome of its last attempt."""
        labels = (record.provider, self._models(record.model), self._features(feature))
        self._child(self.calls, (*labels, record.outcome, record.finish_reason)).inc()

    def record_call(self, record: CallRecord, feature: str) -> None:
        """Everything one attempt tells (whether it ended a logical call is counted by `count_call`)."""
        labels = (record.provider, self._models(record.model), self._features(feature))
        child = self._child
        if record.retry_count > 0:
            child(self.retries, labels).inc()
        if record.error_type is not None:
            child(self.errors, (*labels, record.error_type)).inc()
        if not record.parsed:
            child(self.unparsed, labels).inc()
        duration = record.duration
        if duration is not None:
            child(self.duration, (*labels, "true" if record.stream else "false")).observe(duration)
        ttft = record.time_to_first_token
        if ttft is not None:
            child(self.ttft, labels).observe(ttft)
        rate = record.output_tokens_per_second
        if rate is not None:
            child(self.decode_rate, labels).observe(rate)
        if record.usage_known:
            usage = record.usage
            for kind, value in (
                ("input", usage.input),
                ("cache_read", usage.cache_read),
                ("cache_write", usage.cache_write),
                ("output", usage.output),
                ("reasoning", usage.reasoning),
            ):
                if value:
                    child(self.tokens, (*labels, kind)).inc(value)
            if usage.total_input:
                child(self.cache, (*labels, "hit" if usage.cache_read > 0 else "miss")).inc()
        if record.cost_usd:
            child(self.cost, labels).inc(record.cost_usd)
        if record.tool_calls:
            child(self.tool_calls, labels).inc(len(record.tool_calls))

    def estimated(self, record: CallRecord, feature: str, usd: float) -> None:
        labels = (record.provider, self._models(record.model), self._features(feature))
        self._child(self.estimated_cost, labels).inc(usd)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """`metric.labels(*labels)`, memoised: label values are bounded, and `labels()` is slow on a hot path."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


class _BoundedLabel:
    """Passes the first `limit` distinct values through and collapses the rest to `other`, so a stream of
    model or route names can never grow the number of series without bound."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(value) > MAX_LABEL_LENGTH or not value.isprintable():
            return OTHER
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def metrics_for(registry: CollectorRegistry, *, max_models: int = 50, max_features: int = 200) -> Metrics:
    """One `Metrics` per registry: building a second guard, app or middleware stack reuses the instruments instead
    of failing with "Duplicated timeseries"."""
    with _lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = Metrics(registry, max_models=max_models, max_features=max_features)
        return metrics


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text format for a scrape. Under `PROMETHEUS_MULTIPROC_DIR` (several worker processes) the samples of
    every process are merged in a fresh registry at each scrape."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
