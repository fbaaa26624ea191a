"""Real servers the tests start as processes: Redis (standalone and Cluster), the simulated provider, and the
example app under uvicorn with several workers."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free loopback port whose Redis Cluster bus port (port + 10000) is free too."""
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


def wait_for(ready: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {seconds} s")
        time.sleep(0.05)


def redis_binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are needed (Debian: apt-get install redis-server)")
    return server, cli


class RedisProcess:
    """A redis-server of the test's own, which the test may stop and start again (its data persists on disk)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server, _ = redis_binaries()
        self._process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _ping(self.port), "redis-server")

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)  # a clean shutdown: the append-only file is complete
            self._process.wait(timeout=10)
            self._process = None


@contextmanager
def redis_server(folder: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(folder)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextmanager
def redis_cluster(folder: Path) -> Iterator[str]:
    """A three-master Redis Cluster on loopback; yields the URL of one node."""
    server, cli = redis_binaries()
    ports: list[int] = []
    while len(ports) < 3:
        port = free_port()
        if port not in ports:
            ports.append(port)
    nodes = [_cluster_node(server, port, folder) for port in ports]
    try:
        for port in ports:
            wait_for(lambda port=port: _ping(port), "a Redis Cluster node")
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports), "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        for port in ports:
            wait_for(lambda port=port: _cluster_ok(port), "the Redis Cluster")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(timeout=10)


def _cluster_node(server: str, port: int, folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-config-file", str(folder / f"nodes-{port}.conf"), "--dir", str(folder),
         "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _ping(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_connect_timeout=0.2) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _cluster_ok(port: int) -> bool:
    try:
        with redis.Redis(port=port) as client:
            info = client.execute_command("CLUSTER INFO")
    except redis.RedisError:
        return False
    if isinstance(info, dict):
        return info.get("cluster_state") == "ok"
    return b"cluster_state:ok" in (info if isinstance(info, bytes) else str(info).encode())


def _http_up(url: str) -> bool:
    try:
        httpx.get(url, timeout=0.5)
    except httpx.HTTPError:
        return False
    return True


@contextmanager
def python_server(
    args: list[str], url: str, probe: str, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: process.poll() is None and _http_up(url + probe), " ".join(args))
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()


@contextmanager
def provider_process(*flags: str) -> Iterator[str]:
    """`python -m llmguard.testing` in a process of its own; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with python_server(["-m", "llmguard.testing", "--port", str(port), *flags], url, "/_sim/requests"):
        yield url


@contextmanager
def example_app(
    provider_url: str, env: Mapping[str, str], workers: int = 1
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The FastAPI example under uvicorn (`workers` processes), its SDKs pointed at `provider_url`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["-m", "uvicorn", "app:app", "--app-dir", "examples/fastapi_app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]  # fmt: skip
    if workers > 1:
        args += ["--workers", str(workers)]
    environment = {"OPENAI_BASE_URL": f"{provider_url}/v1", "ANTHROPIC_BASE_URL": provider_url, **env}
    with python_server(args, url, "/metrics", environment) as process:
        yield url, process
