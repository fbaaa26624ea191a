"""Litestar in one line: `Litestar(..., plugins=[LLMGuardPlugin(guard)])`.

Plain `DefineMiddleware(LLMGuardMiddleware, guard=guard)` meters every call, but Litestar differs from Starlette in
two ways this plugin covers: its own exception handling sits between the route handler and app middleware (so an
unhandled block would become a 500, not the 402/429 problem document), and app middleware only runs for routes
that exist (so `/metrics` needs a route of its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmguard.errors import GuardBlocked
from llmguard.guard import Guard, default_guard
from llmguard.middleware import LLMGuardMiddleware

try:
    from litestar import Request, Response, asgi
    from litestar.middleware import DefineMiddleware
    from litestar.plugins import InitPluginProtocol
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("llmguard.litestar needs Litestar: pip install litestar") from exc

if TYPE_CHECKING:
    from litestar.config.app import AppConfig
    from litestar.types import Receive, Scope, Send

__all__ = ["LLMGuardPlugin"]


class LLMGuardPlugin(InitPluginProtocol):
    def __init__(self, guard: Guard | None = None) -> None:
        self.guard = default_guard() if guard is None else guard

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        guard = self.guard
        # Litestar types ASGI scopes as TypedDicts; ours are the plain mappings Starlette uses.
        app_config.middleware.append(DefineMiddleware(LLMGuardMiddleware, guard=guard))  # type: ignore[arg-type]
        app_config.exception_handlers = {**app_config.exception_handlers, GuardBlocked: _problem}
        path = guard.settings.metrics_path
        if path:

            @asgi(path, copy_scope=False, include_in_schema=False)
            async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
                await guard.metrics_app(scope, receive, send)  # type: ignore[arg-type]

            app_config.route_handlers.append(metrics)
        return app_config


def _problem(request: Request[Any, Any, Any], exc: GuardBlocked) -> Response[Any]:
    return Response(content=exc.problem(), status_code=exc.status_code, media_type="application/problem+json")
