"""Which attempts are logical calls.

The official SDKs retry a failed attempt themselves (429, 5xx, a lost connection), sending the same body again
with `x-stainless-retry-count` raised. Each attempt crosses the transport, but together they are one call. So an
attempt that failed in a way the SDK retries is held back: if the retry arrives, the retry carries the call on;
if the unit of work ends first, or no retry came within the SDKs' longest wait, the failure ended its call.
"""

from __future__ import annotations

import hashlib
import time

from llmguard.context import PendingFailure, SessionContext
from llmguard.metrics import Metrics
from llmguard.record import CallRecord

RETRYABLE_STATUS = frozenset({408, 409, 429})
# The SDKs wait at most 120 s (a provider's retry-after) before a retry: past that, no retry is coming.
RETRY_WINDOW_SECONDS = 130.0
MAX_ORPHANS = 10_000


class LogicalCalls:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._orphans: dict[str, PendingFailure] = {}  # failed attempts made outside any unit of work

    def retried(self, context: SessionContext | None, body: bytes) -> None:
        """An SDK retry is starting: the failed attempt before it did not end the logical call after all."""
        self._pending(context).pop(_fingerprint(body), None)

    def ended(self, record: CallRecord, feature: str, context: SessionContext | None, body: bytes) -> bool:
        """Whether this attempt ends its logical call now (then it is counted with its outcome)."""
        if record.sdk_retries and record.outcome == "error" and _retryable(record):
            pending = self._pending(context)
            pending[_fingerprint(body)] = (record, feature, time.monotonic() + RETRY_WINDOW_SECONDS)
            if context is None and len(pending) > MAX_ORPHANS:  # a flood of failures: the oldest are final
                _, (oldest, oldest_feature, _) = next(iter(pending.items()))
                pending.pop(next(iter(pending)))
                self._metrics.count_call(oldest, oldest_feature)
            return False
        self._metrics.count_call(record, feature)
        return True

    def flush(self, context: SessionContext) -> None:
        """The unit of work ended: failed attempts no retry followed were the end of their logical calls."""
        for record, feature, _ in context.pending_failures.values():
            self._metrics.count_call(record, feature)
        context.pending_failures.clear()

    def flush_stale(self) -> None:
        """Failed attempts outside any unit of work end their logical call once no retry came in time."""
        if not self._orphans:
            return
        now = time.monotonic()
        for key, (record, feature, deadline) in list(self._orphans.items()):
            if deadline <= now:
                del self._orphans[key]
                self._metrics.count_call(record, feature)

    def _pending(self, context: SessionContext | None) -> dict[str, PendingFailure]:
        return context.pending_failures if context is not None else self._orphans


def _retryable(record: CallRecord) -> bool:
    """Whether the official SDKs would retry this failed attempt (their `x-should-retry` header wins)."""
    if record.should_retry is not None:
        return record.should_retry
    status = record.status_code
    if status is None:
        return record.error_type in ("connection", "timeout")
    return status in RETRYABLE_STATUS or status >= 500


def _fingerprint(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()
