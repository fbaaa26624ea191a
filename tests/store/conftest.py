from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

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


def _free_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too: ephemeral ports would overflow."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-master Redis Cluster on loopback, started once per test session."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("redis-server and redis-cli are needed for the cluster tests")
    folder: Path = tmp_path_factory.mktemp("cluster")
    ports: list[int] = []
    while len(ports) < 3:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    nodes = [_start_node(server, port, folder) for port in ports]
    try:
        for port in ports:
            _wait(lambda port=port: _node_ready(port, cluster=False))
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports), "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )  # fmt: skip
        for port in ports:
            _wait(lambda port=port: _node_ready(port, cluster=True))
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(timeout=10)


def _start_node(server: str, port: int, folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", str(folder / f"nodes-{port}.conf"), "--dir", str(folder),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _node_ready(port: int, *, cluster: bool) -> bool:
    try:
        with redis.Redis(port=port) as client:
            if not cluster:
                return bool(client.ping())
            info = client.execute_command("CLUSTER INFO")
    except redis.RedisError:
        return False
    if isinstance(info, dict):
        return info.get("cluster_state") == "ok"
    return b"cluster_state:ok" in (info if isinstance(info, bytes) else str(info).encode())


def _wait(ready: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if ready():
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the Redis node did not come up")
        time.sleep(0.05)


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
