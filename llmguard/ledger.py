"""The life of one LLM call in the books: open it, admit it against the caps, and close it exactly once
(cost, metrics, settlement of its hold). The transports call this; it knows nothing about HTTP libraries."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from llmguard.context import SessionContext, current
from llmguard.errors import BudgetExceeded, GuardBlocked, LoopDetected, raisable
from llmguard.metrics import Metrics
from llmguard.policy import caps_for
from llmguard.pricing import Prices, estimate_input_tokens
from llmguard.providers import Adapter, RequestInfo
from llmguard.record import CallRecord, Usage
from llmguard.retries import LogicalCalls
from llmguard.settings import GuardSettings
from llmguard.store.base import Admission, Caps, Reservation, Settlement, SettleResult
from llmguard.store.failover import FailoverStore
from llmguard.store.keys import session_key

logger = logging.getLogger("llmguard")

MAX_WARNED_MODELS = 1_000


@dataclass(slots=True, eq=False)
class Call:
    record: CallRecord
    context: SessionContext | None
    feature: str
    body: bytes
    reservation: Reservation
    admitted: bool = False
    closed: bool = False


class Ledger:
    def __init__(self, settings: GuardSettings, store: FailoverStore, prices: Prices, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.prices = prices
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_unpriced: set[str] = set()
        self.calls = LogicalCalls(metrics)

    def open(self, adapter: Adapter, provider: str, info: RequestInfo, body: bytes, retry_count: int) -> Call:
        context = current()
        feature = context.resolve_feature() if context is not None else "unknown"
        record = CallRecord(
            call_id=uuid.uuid4().hex,
            provider=provider,
            api=adapter.api,
            model=info.model,
            stream=info.stream,
            started_at=0.0,
            retry_count=retry_count,
            max_output_tokens=info.max_output_tokens,
            request_digest=info.digest,
        )
        if retry_count > 0:
            self.calls.retried(context, body)
        session_id = context.session_id if context is not None else None
        input_tokens = estimate_input_tokens(len(body))
        output_cap = info.max_output_tokens or self.settings.default_max_output_tokens
        estimate = self.prices.estimate(provider, info.model, input_tokens, output_cap)
        reservation = Reservation(
            call_id=record.call_id,
            session_key=session_key(session_id) if session_id else None,
            session_id=session_id,
            feature=feature,
            estimate_usd=estimate or 0.0,
            estimate_tokens=input_tokens + output_cap,
            caps=self.caps(context),
            hold_ttl_seconds=self.settings.hold_ttl_seconds,
            session_ttl_seconds=self.settings.session_ttl_seconds,
            count_call=retry_count == 0,
        )
        call = Call(record, context, feature, body, reservation)
        if estimate is None:
            self._unpriced(call)
        return call

    async def admit(self, call: Call) -> None:
        if call.context is not None:
            # The session's earlier calls must be in the books first: their cost and tool calls decide this one.
            await self.drain(call.context)
        self._check(call, await self.store.reserve(call.reservation))

    def admit_sync(self, call: Call) -> None:
        self._check(call, self.store.reserve_sync(call.reservation))

    def close(self, call: Call) -> None:
        """Called once per call, from the metered stream or from the transport when the request failed."""
        if call.closed:
            return
        call.closed = True
        record = call.record
        context = call.context
        if record.refused and record.finish_reason == "stop":
            record.finish_reason = "content_filter"  # a refusal ends "normally" on the wire
        if record.usage_known:
            record.cost_usd = self.prices.cost(record.provider, record.model, record.usage)
        self.calls.ended(record, call.feature, context, call.body)
        self.metrics.record_call(record, call.feature)
        self.calls.flush_stale()
        if record.finish_reason == "content_filter":
            logger.warning(
                "llmguard: content filter on %s call %s (model %s, request sha256 %s)",
                record.provider, record.call_id, record.model, record.request_digest,
            )  # fmt: skip
        if record.error_type is not None:
            logger.info("llmguard: %s call failed: %s (%s)", record.provider, record.error_type, record.error_code)
        if context is not None:
            context.action_cost += record.cost_usd or 0.0
            context.llm_calls += 1
        if call.admitted:
            self._settle(call)

    async def drain(self, context: SessionContext | None = None) -> None:
        """Wait for settlements still in flight: a unit of work's own (before its response ends), or all of them
        (inspection, shutdown). Settlements running on another thread's event loop are waited for by polling."""
        loop = asyncio.get_running_loop()
        # Only what is in flight now: under steady traffic, new settlements keep arriving.
        waiting = list(context.settling if context else self._tasks)
        while pending := [task for task in waiting if not task.done()]:
            mine = [task for task in pending if task.get_loop() is loop]
            if mine:
                await asyncio.gather(*mine, return_exceptions=True)
            else:
                await asyncio.sleep(0.001)
        if context is not None:
            context.settling.clear()

    # -- internals --

    def caps(self, context: SessionContext | None) -> Caps:
        """The caps that apply to calls of this unit of work: its own limits, else the settings'."""
        return caps_for(self.settings, context.limits if context is not None else None)

    def _unpriced(self, call: Call) -> None:
        caps = call.reservation.caps
        capped = any(
            cap is not None for cap in (caps.session_budget_usd, caps.feature_daily_budget_usd, caps.daily_budget_usd)
        )
        model = call.record.model
        if capped and self.settings.unpriced_models == "deny":
            self._block(call, Admission(False, "unpriced_model"), f"No price is known for model {model!r}")
        if model not in self._warned_unpriced and len(self._warned_unpriced) < MAX_WARNED_MODELS:
            self._warned_unpriced.add(model)
            logger.warning("llmguard: no price known for model %r; its calls count as $0", model)

    def _check(self, call: Call, admission: Admission) -> None:
        if admission.allowed:
            call.admitted = True
            return
        reason = admission.reason or "session_budget"
        self._block(call, admission, _DETAILS.get(reason, reason).format(feature=call.feature))

    def _block(self, call: Call, admission: Admission, detail: str) -> None:
        reason = admission.reason or "session_budget"
        self.metrics.blocks.labels(self.metrics.feature(call.feature), reason).inc()
        cls = raisable(_BLOCK_CLASSES.get(reason, BudgetExceeded))
        error = cls(
            reason,
            detail,
            session_id=call.reservation.session_id,
            spent_usd=admission.spent_usd,
            limit_usd=admission.limit_usd,
        )
        raise error

    def _settle(self, call: Call) -> None:
        record = call.record
        if record.usage_known:
            cost: float | None = record.cost_usd or 0.0
        elif not record.sent or (record.status_code is not None and record.status_code >= 400):
            cost = 0.0  # the call never reached the provider, or it refused the call: nothing was generated
        elif record.terminal:
            cost = self._measured(call)  # complete but without usage (e.g. Chat streams without include_usage)
        else:
            cost = None  # cut short: the store charges max(measured, hold)
        usage = record.usage
        settlement = Settlement(
            call_id=record.call_id,
            session_key=call.reservation.session_key,
            session_id=call.reservation.session_id,
            feature=call.feature,
            cost_usd=cost,
            estimate_usd=self._measured(call) if cost is None else cost,
            tokens={
                "input": usage.input,
                "cache_read": usage.cache_read,
                "cache_write": usage.cache_write,
                "output": usage.output,
                "reasoning": usage.reasoning,
            },
            tool_signatures=[tool.signature() for tool in record.tool_calls],
            count_call=call.reservation.count_call,
            loop_repeat_threshold=self.settings.loop_repeat_threshold,
            loop_warn_threshold=self.settings.loop_warn_threshold,
            loop_history=self.settings.loop_history,
            hold_ttl_seconds=self.settings.hold_ttl_seconds,
            session_ttl_seconds=self.settings.session_ttl_seconds,
        )
        if not self.store.remote:
            self._settled(call, self.store.settle_sync(settlement))
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._settled(call, self.store.settle_sync(settlement))
            return
        task = loop.create_task(self._settle_async(call, settlement))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if call.context is not None:
            call.context.settling.append(task)

    async def _settle_async(self, call: Call, settlement: Settlement) -> None:
        self._settled(call, await self.store.settle(settlement))

    def _settled(self, call: Call, result: SettleResult) -> None:
        if result.already_settled:
            return
        if call.record.cost_usd is None and result.charged_usd > 0:
            self.metrics.estimated(call.record, call.feature, result.charged_usd)
            if call.context is not None:
                call.context.action_cost += result.charged_usd
        if result.loop_warning:
            self.metrics.loop_warnings.labels(self.metrics.feature(call.feature)).inc()
            logger.warning("llmguard: session %s repeats its tool calls", call.reservation.session_id)

    def _measured(self, call: Call) -> float:
        record = call.record
        output = record.usage.output if record.usage_known else record.content_events
        usage = Usage(input=estimate_input_tokens(len(call.body)), output=output)
        return self.prices.cost(record.provider, record.model, usage) or 0.0


_DETAILS = {
    "session_budget": "This session's LLM budget would be exceeded by this call.",
    "session_llm_calls": "This session has made as many LLM calls as it may.",
    "session_tool_calls": "This session's agent has made more tool calls than it may.",
    "session_tokens": "This session's token allowance would be exceeded by this call.",
    "feature_daily_budget": "Today's LLM budget for feature {feature} is spent.",
    "daily_budget": "Today's LLM budget for this service is spent.",
    "loop_detected": "This session's agent keeps repeating the same tool calls.",
    "store_unavailable": "The budget store is unavailable and llmguard is set to fail closed.",
}


_BLOCK_CLASSES: dict[str, type[GuardBlocked]] = {"loop_detected": LoopDetected, "store_unavailable": GuardBlocked}
