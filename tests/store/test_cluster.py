"""The Redis store on a three-master Redis Cluster (the behaviour suite runs on it too, as the `cluster` backend)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from llmguard.store.base import Caps
from llmguard.store.keys import session_key
from llmguard.store.redis import FAILURES, RedisStore
from tests.store.conftest import redis_settings
from tests.store.helpers import reservation, settlement
from tests.store.test_redis import KEY


@pytest.fixture
def cluster(redis_cluster_url: str) -> Iterator[RedisCluster]:
    with RedisCluster.from_url(redis_cluster_url) as client:
        yield client


@pytest.fixture
async def store(redis_cluster_url: str, prefix: str, cluster: RedisCluster) -> object:
    cluster_store = RedisStore(redis_settings(prefix, redis_cluster_url, redis_cluster=True))
    yield cluster_store
    await cluster_store.aclose()
    for key in list(cluster.scan_iter(match=f"{prefix}:*")):
        cluster.delete(key)


async def test_each_scope_is_one_slot_and_sessions_spread_over_the_nodes(
    store: RedisStore, prefix: str, cluster: RedisCluster
) -> None:
    caps = Caps(session_budget_usd=10.0, feature_daily_budget_usd=10.0, daily_budget_usd=10.0)
    for i in range(30):
        await store.reserve(reservation(f"c{i}", f"session-{i}", caps=caps))
        await store.settle(settlement(f"c{i}", f"session-{i}", tools=["t()"]))
    slots: dict[str, set[int]] = {}
    for raw in cluster.scan_iter(match=f"{prefix}:*"):
        key = raw.decode()
        assert cluster.pttl(key) > 0
        match = KEY.fullmatch(key)
        if match is not None:
            slots.setdefault(match["tag"], set()).add(key_slot(raw))
    assert all(len(group) == 1 for group in slots.values())
    nodes = {cluster.nodes_manager.get_node_from_slot(next(iter(slots[session_key(f"session-{i}")]))).name
             for i in range(30)}  # fmt: skip
    assert len(nodes) > 1


async def test_concurrent_first_use_of_a_fresh_client(store: RedisStore) -> None:
    admissions = await asyncio.gather(*(store.reserve(reservation(f"c{i}", f"s{i}")) for i in range(20)))
    assert all(admission.allowed for admission in admissions)


async def test_scripts_are_loaded_again_on_every_node(store: RedisStore, cluster: RedisCluster) -> None:
    await store.settle(settlement("c1", "a"))
    cluster.script_flush()  # on every primary
    for i in range(10):
        assert (await store.reserve(reservation(f"c{i}", f"s{i}"))).allowed
    cluster.script_flush()
    assert store.settle_sync(settlement("c2", "b", cost=0.25)).charged_usd == 0.25
    assert [state.session_id for state in store.top_sessions_sync(5)] == ["b", "a"]


def test_a_cluster_url_must_be_reachable() -> None:
    store = RedisStore(redis_settings("x", "redis://127.0.0.1:1/0", redis_cluster=True))
    with pytest.raises(FAILURES):
        store.reserve_sync(reservation("c1"))
    store.close()
