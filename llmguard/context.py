"""The session an LLM call belongs to: a ContextVar holding `SessionContext`, and how ids and features resolve."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmguard.settings import GuardSettings, SessionLimits
from llmguard.types import Scope

if TYPE_CHECKING:
    from llmguard.record import CallRecord

UNKNOWN_FEATURE = "unknown"
logger = logging.getLogger("llmguard")

# A failed attempt held back, with its feature and until when a retry may still come.
PendingFailure = tuple["CallRecord", str, float]

_current: ContextVar[SessionContext | None] = ContextVar("llmguard_session", default=None)


@dataclass(slots=True, eq=False)
class SessionContext:
    """One unit of work (an inbound request, or a `guard.session()` block) and the session it belongs to.

    It is mutable and shared by the tasks that inherit it, so concurrent calls inside one request add to the same
    action cost.
    """

    session_id: str | None
    feature: str | None = None
    limits: SessionLimits | None = None
    scope: Scope | None = None  # the ASGI scope: routing fills in the route template after we bind
    settings: GuardSettings | None = None
    action_cost: float = 0.0
    llm_calls: int = 0
    # Retryable failed attempts, by request fingerprint, held back until the SDK retries them or the unit ends:
    # only then is it known whether they ended the logical call.
    pending_failures: dict[str, PendingFailure] = field(default_factory=dict)
    settling: list[asyncio.Task[None]] = field(default_factory=list)  # settlements of this unit still in flight

    def resolve_feature(self) -> str:
        if self.feature is None:
            self.feature = _feature_from_scope(self.scope, self.settings)
        return self.feature


def current() -> SessionContext | None:
    return _current.get()


def bind(context: SessionContext | None) -> Any:
    return _current.set(context)


def unbind(token: Any) -> None:
    _current.reset(token)


def normalise_session_id(raw: str | None, max_length: int) -> str | None:
    """A session id as llmguard keeps it. Over-long ids and ids with control characters are replaced by a digest,
    so they still identify one session but can never bloat a key, a log line or a header."""
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        return None
    if len(value) <= max_length and value.isprintable():
        return value
    return "sha256:" + hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def _feature_from_scope(scope: Scope | None, settings: GuardSettings | None) -> str:
    if scope is None:
        return UNKNOWN_FEATURE
    if settings is not None:
        if settings.feature_resolver is not None:
            try:
                resolved = settings.feature_resolver(scope)
            except Exception as exc:  # a failing resolver must not break the request
                logger.warning("llmguard: feature resolver failed: %r", exc)
                resolved = None
            if resolved:
                return resolved
        if settings.feature_header:
            name = settings.feature_header.lower().encode("latin-1")
            for key, value in scope.get("headers") or ():
                if key == name and value:
                    return str(value.decode("latin-1"))
    route = scope.get("route")
    path = getattr(route, "path", None)  # Starlette and FastAPI set scope["route"] when they route
    if isinstance(path, str) and path:
        return path
    template = scope.get("path_template")  # Litestar
    if isinstance(template, str) and template:
        return template
    return _match_route(scope) or UNKNOWN_FEATURE


def _match_route(scope: Scope) -> str | None:
    """Before routing has run (a request refused at the door), find the route the way Starlette's router will."""
    app = scope.get("app")
    routes = getattr(getattr(app, "router", app), "routes", None)
    if not routes:
        return None
    for route in routes:
        matches = getattr(route, "matches", None)
        path = getattr(route, "path", None)
        if matches is None or not isinstance(path, str):
            continue
        try:
            match, _ = matches(scope)
        except Exception:
            continue
        if getattr(match, "name", None) == "FULL":
            return path
    return None
