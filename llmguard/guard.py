"""`Guard`, the composition root: settings, store, prices, metrics and the ledger, and the ways in."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import httpx2
from prometheus_client import REGISTRY, CollectorRegistry

from llmguard import instrumentation
from llmguard.context import SessionContext, bind, normalise_session_id, unbind
from llmguard.ledger import Ledger
from llmguard.metrics import exposition, metrics_for
from llmguard.policy import exhausted
from llmguard.pricing import Prices
from llmguard.settings import GuardSettings, SessionLimits, build_settings
from llmguard.store.base import BudgetStore, SessionState
from llmguard.store.failover import FailoverStore
from llmguard.store.keys import session_key
from llmguard.store.memory import MemoryStore
from llmguard.transport import AsyncGuardedTransport, GuardedTransport
from llmguard.types import Receive, Scope, Send

__all__ = ["Guard"]


class Guard:
    """Meters and guards outbound LLM calls. One per process is the norm; see `LLMGuardMiddleware`."""

    def __init__(
        self,
        settings: GuardSettings | None = None,
        *,
        registry: CollectorRegistry | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = settings = build_settings(settings, overrides)
        self.registry = REGISTRY if registry is None else registry
        self.metrics = metrics_for(self.registry, max_models=settings.max_models, max_features=settings.max_features)
        self.prices = Prices(settings.prices)
        self.prices.warm()
        self.store = FailoverStore(
            _primary_store(settings),
            policy=settings.store_failure,
            on_error=lambda operation: self.metrics.store_errors.labels(operation).inc(),
        )
        self.ledger = Ledger(settings, self.store, self.prices, self.metrics)
        self.metrics_app = MetricsApp(self)

    # -- binding calls to sessions --

    def session(
        self, session_id: str | None, *, feature: str | None = None, limits: SessionLimits | None = None
    ) -> SessionBinding:
        """Bind LLM calls made inside the block to a session, outside any inbound request (a worker, a script)."""
        context = SessionContext(
            session_id=normalise_session_id(session_id, self.settings.max_session_id_length),
            feature=feature,
            limits=limits,
            settings=self.settings,
        )
        return SessionBinding(self.ledger, context)

    # -- clients and transports --

    def async_transport(self, inner: Any = None) -> AsyncGuardedTransport:
        return AsyncGuardedTransport(self.ledger, httpx2.AsyncHTTPTransport() if inner is None else inner)

    def transport(self, inner: Any = None) -> GuardedTransport:
        return GuardedTransport(self.ledger, httpx2.HTTPTransport() if inner is None else inner)

    def async_client(self, **kwargs: Any) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=self.async_transport(kwargs.pop("transport", None)), **kwargs)

    def client(self, **kwargs: Any) -> httpx2.Client:
        return httpx2.Client(transport=self.transport(kwargs.pop("transport", None)), **kwargs)

    def instrument(self) -> None:
        """Meter every httpx2 and httpx client of the process, including those inside the official SDKs."""
        instrumentation.instrument(self.ledger)

    def uninstrument(self) -> None:
        instrumentation.uninstrument(self.ledger)

    # -- inspection --

    async def get_session(self, session_id: str) -> SessionState | None:
        """A session's totals, holds and block; `None` if it is unknown or expired."""
        await self.ledger.drain()
        return self._with_block(await self.store.get_session(self._key(session_id)))

    def get_session_sync(self, session_id: str) -> SessionState | None:
        return self._with_block(self.store.get_session_sync(self._key(session_id)))

    def _with_block(self, state: SessionState | None) -> SessionState | None:
        # A used-up cap blocks a session as surely as a flagged loop, though only the loop is stored as such.
        if state is not None and state.blocked_reason is None:
            state.blocked_reason = exhausted(state, self.ledger.caps(None))
        return state

    def end_session_sync(self, session_id: str) -> SessionState | None:
        state = self.store.end_session_sync(self._key(session_id))
        self._observe_ended(state)
        return state

    async def end_session(self, session_id: str) -> SessionState | None:
        """Forget a session's state, and observe its totals in the per-session histograms."""
        await self.ledger.drain()
        state = await self.store.end_session(self._key(session_id))
        self._observe_ended(state)
        return state

    def _observe_ended(self, state: SessionState | None) -> None:
        if state is not None:
            self.metrics.session_cost.observe(state.spent_usd)
            self.metrics.session_tool_calls.observe(state.tool_calls)
            self.metrics.session_llm_calls.observe(state.llm_calls)

    async def top_sessions(self, limit: int = 10) -> list[SessionState]:
        return await self.store.top_sessions(limit)

    async def aclose(self) -> None:
        """Finish settlements in flight and close the store's connections (call it at shutdown)."""
        await self.ledger.drain()
        await self.store.aclose()

    def close(self) -> None:
        """Close the store's sync connections (for apps that only use the sync transport)."""
        self.store.close()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _key(self, session_id: str) -> str:
        normalised = normalise_session_id(session_id, self.settings.max_session_id_length)
        if normalised is None:
            raise ValueError("session_id must not be empty")
        return session_key(normalised)


class SessionBinding:
    """`with guard.session(...)` or `async with guard.session(...)`."""

    def __init__(self, ledger: Ledger, context: SessionContext) -> None:
        self._ledger = ledger
        self.context = context
        self._tokens: list[Any] = []

    def __enter__(self) -> SessionContext:
        self._tokens.append(bind(self.context))
        return self.context

    def __exit__(self, *exc: object) -> None:
        self._ledger.calls.flush(self.context)
        unbind(self._tokens.pop())

    async def __aenter__(self) -> SessionContext:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._ledger.drain(self.context)
        self.__exit__()


class MetricsApp:
    """An ASGI app serving the Prometheus text format (mount it, or let the middleware answer `/metrics`)."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        guard = self._guard
        guard.ledger.calls.flush_stale()
        active = await guard.store.active_sessions(guard.settings.session_ttl_seconds)
        guard.metrics.active_sessions.set(active)
        body, content_type = exposition(guard.registry)
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _primary_store(settings: GuardSettings) -> BudgetStore:
    if settings.redis_url is None:
        return MemoryStore()
    from llmguard.store.redis import RedisStore

    return RedisStore(settings)


_default: Guard | None = None
_default_lock = threading.Lock()


def default_guard() -> Guard:
    """The process-wide guard the middleware uses when it is given none, configured from the environment."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Guard()
        return _default
