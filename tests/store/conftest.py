from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from llmguard.settings import GuardSettings
from llmguard.store.memory import MemoryStore
from llmguard.store.redis import RedisStore
from tests.store.helpers import Api, Store

REDIS_URL = "redis://127.0.0.1:6379/0"
# Generous next to the 50 ms default, so a loaded test machine does not turn into failures.
TEST_TIMEOUT = 2.0


def redis_settings(prefix: str, url: str = REDIS_URL, **overrides: object) -> GuardSettings:
    return GuardSettings(redis_url=url, redis_prefix=prefix, redis_timeout_seconds=TEST_TIMEOUT, **overrides)


def _delete_prefix(client: redis.Redis | redis.cluster.RedisCluster, prefix: str) -> None:
    for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
        client.delete(key)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A namespace of its own for each test, emptied afterwards."""
    value = f"llmguard-test-{uuid.uuid4().hex}"
    yield value
    with redis.Redis.from_url(REDIS_URL) as client:
        _delete_prefix(client, value)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    with redis.Redis.from_url(REDIS_URL) as client:
        yield client


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["async", "sync"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(backend: str, prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if backend == "memory":
        yield MemoryStore()
        return
    if backend == "redis":
        redis_store = RedisStore(redis_settings(prefix))
    else:
        url = request.getfixturevalue("redis_cluster_url")
        redis_store = RedisStore(redis_settings(prefix, url, redis_cluster=True))
    try:
        yield redis_store
    finally:
        await redis_store.aclose()
        if backend == "cluster":
            with redis.cluster.RedisCluster.from_url(url) as client:
                _delete_prefix(client, prefix)


@pytest.fixture
def api(store: Store, mode: str) -> Api:
    return Api(store, "async" if mode == "async" else "sync")
