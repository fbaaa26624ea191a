"""`LLMGuardMiddleware`: binds each inbound request to a session and a feature, pure ASGI.

The first parameter is named `app`, so the one class serves Starlette and FastAPI (`add_middleware`) and Litestar
(`DefineMiddleware`). All per-request state lives in the `SessionContext` and the closures of `__call__`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from llmguard.context import SessionContext, bind, normalise_session_id, unbind
from llmguard.errors import BudgetExceeded, GuardBlocked, LoopDetected
from llmguard.guard import Guard, default_guard
from llmguard.policy import exhausted
from llmguard.store.keys import session_key
from llmguard.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LLMGuardMiddleware"]

logger = logging.getLogger("llmguard")
T = TypeVar("T")


class LLMGuardMiddleware:
    def __init__(self, app: ASGIApp, guard: Guard | None = None) -> None:
        self.app = app
        self.guard = default_guard() if guard is None else guard
        settings = self.guard.settings
        self._header = settings.session_header.lower().encode("latin-1")
        self._metrics_path = settings.metrics_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._metrics_path and scope["path"] == self._metrics_path and scope["method"] in ("GET", "HEAD"):
            await self.guard.metrics_app(scope, receive, send)
            return
        guard = self.guard
        settings = guard.settings
        context = SessionContext(
            session_id=normalise_session_id(self._session_id(scope), settings.max_session_id_length),
            limits=_resolve(settings.limits_resolver, scope),
            scope=scope,
            settings=settings,
        )
        if context.session_id is not None and settings.reject_blocked_sessions:
            refusal = await self._refusal(context)
            if refusal is not None:
                guard.metrics.blocks.labels(guard.metrics.feature(context.resolve_feature()), refusal.reason).inc()
                await _send_problem(send, refusal)
                return

        started = False
        streaming = False
        finished = False

        def finish() -> None:
            # Accounted before the last body byte leaves, so a client that has its response sees the metrics.
            nonlocal finished
            if finished:
                return
            finished = True
            guard.ledger.calls.flush(context)
            if context.llm_calls:
                feature = guard.metrics.feature(context.resolve_feature())
                guard.metrics.action_cost.labels(feature).observe(context.action_cost)

        async def guarded_send(message: Message) -> None:
            nonlocal started, streaming
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers") or []
                streaming = any(k.lower() == b"content-type" and b"text/event-stream" in v for k, v in headers)
                if context.llm_calls and not streaming:
                    message["headers"] = [*headers, *await self._cost_headers(context)]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                await guard.ledger.drain(context)
                finish()
            await send(message)

        token = bind(context)
        try:
            await self.app(scope, receive, guarded_send)
        except BaseException as exc:
            found = _find_block(exc)
            if found is None:
                raise
            if not started:
                await _send_problem(send, found)
            elif streaming:
                payload = json.dumps(found.problem()).encode()
                await send({"type": "http.response.body", "body": b"event: error\ndata: " + payload + b"\n\n"})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                raise  # a plain response is half sent: nothing sensible can follow it
        finally:
            finish()
            unbind(token)

    def _session_id(self, scope: Scope) -> str | None:
        resolver = self.guard.settings.session_resolver
        if resolver is not None:
            return _resolve(resolver, scope)
        for key, value in scope.get("headers") or ():
            if key == self._header:
                return str(value.decode("latin-1"))
        return None

    async def _refusal(self, context: SessionContext) -> GuardBlocked | None:
        """A session that can make no further call is refused before the app runs."""
        assert context.session_id is not None
        guard = self.guard
        state = await guard.store.get_session(session_key(context.session_id))
        if state is None:
            return None
        caps = guard.ledger.caps(context)
        reason = exhausted(state, caps)
        if reason is None:
            return None
        cls = LoopDetected if reason == "loop_detected" else BudgetExceeded
        detail = "This session is blocked; it may make no further LLM calls."
        return cls(reason, detail, session_id=context.session_id, spent_usd=state.spent_usd,
                   limit_usd=caps.session_budget_usd)  # fmt: skip

    async def _cost_headers(self, context: SessionContext) -> list[tuple[bytes, bytes]]:
        if context.session_id is None:
            return [(b"x-llmguard-action-cost-usd", f"{context.action_cost:.6f}".encode())]
        guard = self.guard
        await guard.ledger.drain(context)
        state = await guard.store.get_session(session_key(context.session_id))
        spent = state.spent_usd if state is not None else context.action_cost
        headers = [(b"x-llmguard-session-cost-usd", f"{spent:.6f}".encode())]
        limits = context.limits
        budget = limits.budget_usd if limits is not None else guard.settings.session_budget_usd
        if budget is not None:
            remaining = max(budget - spent - (state.held_usd if state is not None else 0.0), 0.0)
            headers.append((b"x-llmguard-budget-remaining-usd", f"{remaining:.6f}".encode()))
        return headers


def _resolve(resolver: Callable[[Scope], T | None] | None, scope: Scope) -> T | None:
    """Call a user's resolver; a failing one must not break the request: it counts as having no answer."""
    if resolver is None:
        return None
    try:
        return resolver(scope)
    except Exception as exc:
        logger.warning("llmguard: resolver %r failed: %r", resolver, exc)
        return None


def _find_block(exc: BaseException) -> GuardBlocked | None:
    """A block arrives bare, or wrapped in an exception group by a task group (streaming responses)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, GuardBlocked):
            return current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
    return None


async def _send_problem(send: Send, blocked: GuardBlocked) -> None:
    body = json.dumps(blocked.problem()).encode()
    headers: list[Any] = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": blocked.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
