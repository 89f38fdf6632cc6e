"""The limiter and the Redis client on a real three-node Redis Cluster, made for the test."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gatewayd.ratelimit.backend import Ask
from gatewayd.ratelimit.gcra import Rate
from gatewayd.ratelimit.redis_backend import RedisBackend
from gatewayd.redis_client import RedisClient, slot
from tests.conftest import free_port, service_missing


def _ports(count: int) -> list[int]:
    """Free ports whose cluster bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 < 65536 and port not in ports:
            ports.append(port)
    return ports


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[int]]:
    """Three redis-server nodes in cluster mode, all slots assigned; their ports."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        service_missing("redis-server", FileNotFoundError("redis-server or redis-cli"))
    assert server is not None
    assert cli is not None
    ports = _ports(3)
    nodes = []
    for port in ports:
        directory = tmp_path / str(port)
        directory.mkdir()
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
        argv += ["--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"]
        nodes.append(
            subprocess.Popen(
                argv, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    try:
        for port in ports:
            for _ in range(50):
                ping = subprocess.run(
                    [cli, "-p", str(port), "ping"], capture_output=True, text=True, check=False
                )
                if ping.stdout.strip() == "PONG":
                    break
                subprocess.run(["sleep", "0.1"], check=True)
        addresses = [f"127.0.0.1:{port}" for port in ports]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=30,
        )
        for port in ports:
            for _ in range(100):
                info = subprocess.run(
                    [cli, "-p", str(port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if "cluster_state:ok" in info.stdout:
                    break
                subprocess.run(["sleep", "0.1"], check=True)
        yield ports
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(timeout=10)


@pytest.fixture
async def client(cluster: list[int]) -> AsyncIterator[RedisClient]:
    """A client given the first node only, as an operator's redis_url would be."""
    redis = RedisClient(f"redis://127.0.0.1:{cluster[0]}/0")
    yield redis
    await redis.close()


async def test_keys_in_every_slot_range_are_served(client: RedisClient) -> None:
    """Keys living on each of the three nodes are set and read through one URL."""
    keys = [f"key-{n}" for n in range(60)]
    await asyncio.gather(*(client.call("SET", k, k, key=k) for k in keys))
    values = await asyncio.gather(*(client.call("GET", k, key=k) for k in keys))
    assert values == [k.encode() for k in keys]


async def test_limiter_decisions_land_on_the_node_of_their_budget(client: RedisClient) -> None:
    """Budgets whose hash tags live on different nodes all decide, and hold their limit."""
    backend = RedisBackend(client, 2.0)
    keys = [f"*:ip:192.0.2.{n}" for n in range(12)]
    slots = {slot("{" + key + "}") // 5462 for key in keys}
    assert len(slots) > 1  # the budgets are spread over the nodes
    rate = Rate.per_minute(60, 2)
    for key in keys:
        ask = Ask(key, rate, None, 0, 1, "lease", 60.0)
        answers = [await backend.acquire(ask) for _ in range(3)]
        assert [a.refused for a in answers] == [None, "concurrency", "concurrency"]
        await backend.settle(ask, None)
        second = Ask(key, rate, None, 0, 0, "lease", 60.0)
        assert (await backend.acquire(second)).refused is None
        assert (await backend.acquire(second)).refused == "requests"
