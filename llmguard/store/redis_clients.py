"""The Redis store's connections: one async client per running event loop and one sync client, opened on first use."""

from __future__ import annotations

import asyncio
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Final

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

# A burst of calls waits for a pooled connection rather than failing at once; the cluster client cannot wait, so
# each node gets room for a bigger burst.
POOL_CONNECTIONS: Final = 100
POOL_WAIT_SECONDS: Final = 1.0
CLUSTER_CONNECTIONS: Final = 1000


@dataclass(slots=True)
class _LoopClient:
    client: Any
    ready: bool  # a cluster client has discovered its nodes
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RedisClients:
    def __init__(self, url: str, *, cluster: bool, timeout: float, connect_timeout: float) -> None:
        self._url = url
        self._cluster = cluster
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        # Connections belong to the event loop that opened them: one async client per running loop.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = weakref.WeakKeyDictionary()
        self._sync: Any = None
        self._sync_lock = threading.Lock()

    async def for_running_loop(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is None:
            entry = self._loops[loop] = _LoopClient(self._new_async_client(), ready=not self._cluster)
        if not entry.ready:
            # Concurrent first use of a cluster client would run discovery twice and race (redis-py #3935).
            async with entry.lock:
                if not entry.ready:
                    await entry.client.initialize()
                    entry.ready = True
        return entry.client

    def sync(self) -> Any:
        with self._sync_lock:
            if self._sync is None:
                self._sync = self._new_sync_client()
            return self._sync

    async def aclose(self) -> None:
        """Close this loop's client (and the sync one). Clients of other loops are closed by `aclose` there."""
        entry = self._loops.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry.client.aclose()
        self.close()

    def close(self) -> None:
        """Close the sync client."""
        with self._sync_lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()

    def _new_async_client(self) -> Any:
        # No client-side retries: a charge resent after a timeout may already have been applied, and a fast failure
        # reaches the failover policy sooner than a slow success.
        options = self._options(AsyncRetry(NoBackoff(), 0))
        if self._cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(
                self._url, max_connections=CLUSTER_CONNECTIONS, **options
            )
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self._url, max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT_SECONDS, **options
        )
        return redis.asyncio.Redis.from_pool(pool)

    def _new_sync_client(self) -> Any:
        options = self._options(Retry(NoBackoff(), 0))
        if self._cluster:
            return redis.cluster.RedisCluster.from_url(self._url, max_connections=CLUSTER_CONNECTIONS, **options)
        pool = redis.BlockingConnectionPool.from_url(
            self._url, max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT_SECONDS, **options
        )
        return redis.Redis.from_pool(pool)

    def _options(self, retry: object) -> dict[str, Any]:
        return {"socket_timeout": self._timeout, "socket_connect_timeout": self._connect_timeout, "retry": retry}
