"""`LLMGuardMiddleware`: binds each inbound request to a session and a feature, pure ASGI.

The first parameter is named `app`, so the one class serves Starlette and FastAPI (`add_middleware`) and Litestar
(`DefineMiddleware`). All per-request state lives in the `SessionContext` and the closures of `__call__`.
"""

from __future__ import annotations

import json
from typing import Any

from llmguard.context import SessionContext, bind, normalise_session_id, unbind
from llmguard.errors import GuardBlocked
from llmguard.guard import Guard, default_guard
from llmguard.store.keys import session_key
from llmguard.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LLMGuardMiddleware"]


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
            limits=settings.limits_resolver(scope) if settings.limits_resolver is not None else None,
            scope=scope,
            settings=settings,
        )
        if context.session_id is not None and settings.reject_blocked_sessions:
            state = await guard.store.get_session(session_key(context.session_id))
            if state is not None and state.blocked_reason is not None:
                blocked = GuardBlocked(
                    state.blocked_reason,  # type: ignore[arg-type]
                    "This session is blocked; no further LLM calls are allowed.",
                    session_id=context.session_id,
                    spent_usd=state.spent_usd,
                    limit_usd=context.limits.budget_usd if context.limits else settings.session_budget_usd,
                )
                guard.metrics.blocks.labels(guard.metrics.feature(context.resolve_feature()), blocked.reason).inc()
                await _send_problem(send, blocked)
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
            guard.ledger.flush(context)
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
        finally:
            finish()
            unbind(token)

    def _session_id(self, scope: Scope) -> str | None:
        resolver = self.guard.settings.session_resolver
        if resolver is not None:
            return resolver(scope)
        for key, value in scope.get("headers") or ():
            if key == self._header:
                return str(value.decode("latin-1"))
        return None

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
