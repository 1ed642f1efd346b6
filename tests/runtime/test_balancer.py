"""Two ``likeness serve`` nodes on one PostgreSQL consent store behind HAProxy.

The balancer runs ``deploy/haproxy.cfg`` itself, only its ports and its runtime socket
changed, so the sample is what is tested (the start-up is ``tests/runtime/cluster.py``,
shared with ``test_cluster_consent.py``). Each node takes one session
(``server.max_sessions = 1``) so that "full" is one client away. Real aiortc clients
make the offers; their media then goes straight to the node that answered.

Skipped only when Debian's ``haproxy`` or PostgreSQL binaries are missing
(``make setup`` installs both).
"""

from __future__ import annotations

import time

import httpx
import pytest

from runtime.rtc_client import CompanionClient
from tests.consent.conftest import pg_cluster  # noqa: F401 - the throwaway PostgreSQL
from tests.runtime.cluster import NO_STUN, Cluster, haproxy, open_client, start_cluster, until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    if haproxy() is None:
        pytest.skip("HAProxy is not installed: apt-get install -y haproxy (make setup)")
    database = request.getfixturevalue("pg_cluster").new_database()
    root = tmp_path_factory.mktemp("balancer")
    with start_cluster(root, database, env={"LIKENESS_SERVER__MAX_SESSIONS": "1"}) as running:
        yield running


async def _all_up(cluster: Cluster) -> bool:
    stats = await cluster.stats()
    return all(stats[name]["status"] == "UP" for name in cluster.nodes)


async def _settled(cluster: Cluster) -> None:
    """Every session closed and both nodes back in rotation (what each test starts from)."""

    async def idle() -> bool:
        return set((await cluster.sessions()).values()) == {0} and await _all_up(cluster)

    await until(idle, 20, "sessions closed and both nodes UP")


async def test_offers_land_on_both_nodes_and_a_full_cluster_says_busy(cluster):
    await _settled(cluster)
    first = await open_client(cluster.url)
    second = await open_client(cluster.url)
    try:
        assert await cluster.sessions() == {"a": 1, "b": 1}, "one offer answered by each node"
        third = CompanionClient(cluster.url, keep_video=False, configuration=NO_STUN)
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await third.connect()
        await third.pc.close()
        assert refused.value.response.status_code == 503, refused.value.response.text
        assert refused.value.response.headers.get("retry-after")
    finally:
        await first.close()
        await second.close()


async def test_the_room_check_takes_a_full_node_out_and_back(cluster):
    await _settled(cluster)
    direct = await open_client(cluster.nodes["a"].url)  # node A full, the balancer not involved
    try:
        down = time.monotonic()

        async def a_down() -> bool:
            return (await cluster.stats())["a"]["status"] == "DOWN"

        await until(a_down, 5, "HAProxy's /health/room check marks the full node DOWN")
        print(f"full node out of rotation {time.monotonic() - down:.1f} s after it filled")
        through = await open_client(cluster.url)
        try:
            assert await cluster.sessions() == {"a": 1, "b": 1}, "the offer went to node B"
        finally:
            await through.close()
    finally:
        await direct.close()
    await _settled(cluster)  # node A back UP once a session is free


async def test_a_full_nodes_503_moves_the_offer_to_the_next_node(cluster):
    """Between two checks a node can fill up unseen: its 503 must not reach the client.

    Node A's check is paused (it stays UP in HAProxy although full), so only the
    retry (``retry-on 503``, ``option redispatch``) can save offers sent to it."""
    await _settled(cluster)
    await cluster.command("disable health nodes/a")
    direct = await open_client(cluster.nodes["a"].url)
    try:
        before = await cluster.stats()
        # In rotation, unchecked: HAProxy does not know node A is full.
        assert before["a"]["status"] == "no check", before["a"]["status"]
        for _ in range(2):  # both nodes idle to HAProxy: leastconn tries A first at least once
            through = await open_client(cluster.url)  # raises on a 503
            try:
                assert await cluster.sessions() == {"a": 1, "b": 1}, "the offer went to B"
            finally:
                await through.close()

            async def b_free() -> bool:
                # Free, and seen free by HAProxy: while B's check still fails, A is the
                # only node in rotation and its 503 has nowhere to go (the client gets it).
                free = (await cluster.sessions())["b"] == 0
                return free and (await cluster.stats())["b"]["status"] == "UP"

            await until(b_free, 15, "node B's session closed and B back in rotation")
        after = await cluster.stats()
        redispatched = int(after["BACKEND"]["wredis"]) - int(before["BACKEND"]["wredis"])
        assert redispatched >= 1, "no offer was sent to the full node A and moved on"
    finally:
        await direct.close()
        await cluster.command("enable health nodes/a")
    await _settled(cluster)
