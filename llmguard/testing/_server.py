"""`serve`: run an ASGI app under a real uvicorn server on a loopback port, in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

__all__ = ["import_uvicorn", "serve"]


def import_uvicorn() -> ModuleType:
    """Import uvicorn, with a clear message when it is missing."""
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "llmguard.testing needs uvicorn to run a server: pip install uvicorn (or llmguard[examples])"
        ) from exc
    return uvicorn


@contextmanager
def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 2.0,
) -> Iterator[str]:
    """Serve ``app`` over real HTTP while the block runs; yields its base URL, e.g. ``http://127.0.0.1:54321``.

    ``port=0`` picks a free port. The server runs in a daemon thread with its own event loop; on exit it stops
    accepting connections and gives running responses ``shutdown_timeout`` seconds to finish.
    """
    uvicorn = import_uvicorn()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,  # leave the process's logging configuration alone
        access_log=False,
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=shutdown_timeout,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="llmguard-simulated-provider", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server could not start on {host}:{port}")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(shutdown_timeout)
            raise RuntimeError(f"the server did not start within {startup_timeout} s")
        time.sleep(0.002)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout + 5.0)
