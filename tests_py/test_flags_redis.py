"""FeatureFlags against a real redis-server: load at start, pub/sub, resync, garbage, two
processes, and Redis killed and restarted in the middle of traffic."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest
import redis
import redis.asyncio

from conftest import RedisServer
from sark_native.flags import CHANNEL, FeatureFlags, bucket


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_start_loads_every_key(redis_url: str) -> None:
    with sync_client(redis_url) as r:
        r.set("feature:rust_opa:rollout_pct", 25)
        r.set("feature:rust_cache:rollout_pct", "100")
        r.set("feature:a:b:rollout_pct", 7)  # a colon in the name
        r.set("other:key", 5)
    async with FeatureFlags(redis=redis_url) as flags:
        assert flags.rollouts() == {"rust_opa": 25, "rust_cache": 100, "a:b": 7}
        assert flags.healthy
        for i in range(200):
            unit = f"u{i}"
            assert flags.is_enabled("rust_opa", unit) is (bucket("rust_opa", unit) < 25)


@pytest.mark.asyncio
async def test_set_rollout_writes_publishes_and_reaches_another_instance(redis_url: str) -> None:
    async with (
        FeatureFlags(redis=redis_url) as a,
        FeatureFlags(redis=redis_url, resync_interval=60) as b,
    ):
        assert await a.set_rollout("rust_opa", 40) == 0
        assert a.get_rollout("rust_opa") == 40  # at once in the writer
        await wait_until(lambda: b.get_rollout("rust_opa") == 40)  # pub/sub, not the resync
        assert await b.rollback("rust_opa") == 40
        await wait_until(lambda: a.get_rollout("rust_opa") == 0)
        with sync_client(redis_url) as r:
            assert r.get("feature:rust_opa:rollout_pct") == b"0"


@pytest.mark.asyncio
async def test_set_rollout_is_one_transaction(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(CHANNEL)
        async with FeatureFlags(redis=client) as flags:
            await flags.set_rollout("x", 12)
            message = None
            for _ in range(100):
                message = await pubsub.get_message(timeout=0.05)
                if message is not None:
                    break
            assert message is not None
            assert json.loads(message["data"]) == {"feature": "x", "pct": 12}
            assert await client.get("feature:x:rollout_pct") == b"12"
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        assert await client.ping()  # a borrowed client stays open
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_resync_catches_keys_set_by_hand(redis_url: str) -> None:
    async with FeatureFlags(redis=redis_url, resync_interval=0.1) as flags:
        with sync_client(redis_url) as r:
            r.set("feature:by_hand:rollout_pct", 60)
            await wait_until(lambda: flags.get_rollout("by_hand") == 60)
            r.delete("feature:by_hand:rollout_pct")  # a missing key is 0%
            await wait_until(lambda: "by_hand" not in flags.rollouts())
            assert flags.is_enabled("by_hand", "u") is False


@pytest.mark.asyncio
async def test_garbage_in_redis_is_zero_and_logged(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = {"neg": "-5", "big": "101", "word": "banana", "float": "50.5", "bin": b"\xff\x00"}
    with sync_client(redis_url) as r:
        for name, value in garbage.items():
            r.set(f"feature:{name}:rollout_pct", value)
        r.set("feature:good:rollout_pct", 30)
    with caplog.at_level(logging.WARNING, logger="sark_native.flags"):
        async with FeatureFlags(redis=redis_url, resync_interval=0.05) as flags:
            assert flags.rollouts() == {**dict.fromkeys(garbage, 0), "good": 30}
            assert flags.healthy
            assert not any(flags.is_enabled(name, f"u{i}") for name in garbage for i in range(50))
            with sync_client(redis_url) as r:
                r.publish(CHANNEL, "not json")
                r.publish(CHANNEL, json.dumps({"feature": "good", "pct": [1]}))
                r.publish(CHANNEL, json.dumps({"feature": "", "pct": 5}))
                r.publish(CHANNEL, json.dumps({"pct": 5}))
                r.publish(CHANNEL, b"\xff\xfe")
                r.publish(CHANNEL, json.dumps({"feature": "good", "pct": "lots"}))
                # Messages are applied in order: once this one is in, the garbage was handled.
                r.set("feature:good:rollout_pct", 60)
                r.publish(CHANNEL, json.dumps({"feature": "good", "pct": 60}))
            await wait_until(lambda: flags.get_rollout("good") == 60)
            assert flags.healthy  # garbage is not an outage
            await asyncio.sleep(0.3)  # several resyncs: the same garbage is logged once
    logged = [r.getMessage() for r in caplog.records]
    for name in garbage:
        assert sum(f"rollout of {name!r}" in m for m in logged) == 1, logged
    assert sum("malformed" in m for m in logged) == 4, logged
    assert any("rollout of 'good'" in m and "'lots'" in m for m in logged), logged


@pytest.mark.asyncio
async def test_start_without_redis_logs_and_keeps_trying(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    private_redis.kill()
    with caplog.at_level(logging.WARNING, logger="sark_native.flags"):
        async with FeatureFlags(redis=private_redis.url, reconnect_backoff=(0.02, 0.1)) as flags:
            assert not flags.healthy
            assert flags.is_enabled("f", "u") is False
            private_redis.start()
            with sync_client(private_redis.url) as r:
                r.set("feature:f:rollout_pct", 100)
            await wait_until(lambda: flags.get_rollout("f") == 100)
            assert flags.healthy
            assert flags.is_enabled("f", "u")
        with pytest.raises(RuntimeError, match="closed"):
            await flags.set_rollout("f", 1)
    assert any("no percentages from Redis yet" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_redis_killed_and_restarted_mid_traffic(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sark_native.flags")
    flags = FeatureFlags(
        redis=private_redis.url, resync_interval=0.2, reconnect_backoff=(0.02, 0.2)
    )
    await flags.start()
    try:
        await flags.set_rollout("rust_opa", 30)
        expected = {f"u{i}": bucket("rust_opa", f"u{i}") < 30 for i in range(100)}
        calls = failures = wrong = 0
        stop = False

        async def traffic() -> None:
            nonlocal calls, failures, wrong
            while not stop:
                for unit, want in expected.items():
                    try:
                        got = flags.is_enabled("rust_opa", unit)
                    except Exception:
                        failures += 1
                        continue
                    calls += 1
                    if flags.get_rollout("rust_opa") == 30 and got is not want:
                        wrong += 1
                await asyncio.sleep(0)

        runner = asyncio.create_task(traffic())
        await asyncio.sleep(0.2)
        private_redis.kill()
        await wait_until(lambda: not flags.healthy)
        await asyncio.sleep(0.5)  # an outage with traffic: the last values stay in force
        assert flags.get_rollout("rust_opa") == 30
        with pytest.raises(redis.RedisError):
            await flags.set_rollout("rust_opa", 50)  # a change cannot be made, and says so
        assert flags.get_rollout("rust_opa") == 30
        private_redis.start()  # empty: once Redis answers, Redis is the truth (0%)
        await wait_until(lambda: flags.healthy, timeout=10)
        await wait_until(lambda: flags.get_rollout("rust_opa") == 0)
        with sync_client(private_redis.url) as r:
            r.set("feature:rust_opa:rollout_pct", 70)
        await wait_until(lambda: flags.get_rollout("rust_opa") == 70)
        stop = True
        await runner
        assert failures == 0
        assert wrong == 0
        assert calls > 1000
    finally:
        await flags.aclose()
    outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage) == 1, [r.getMessage() for r in caplog.records]
    assert any("reachable again" in r.getMessage() for r in caplog.records)


CHILD = """
import asyncio, sys, time
from sark_native.flags import FeatureFlags

async def main(url):
    async with FeatureFlags(redis=url, resync_interval=60) as flags:
        print("READY", flush=True)
        last = flags.get_rollout("prop")
        while True:
            pct = flags.get_rollout("prop")
            if pct != last:
                last = pct
                print("SEEN", pct, time.monotonic_ns(), flush=True)
                if pct == 100:
                    return
            await asyncio.sleep(0.0005)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.asyncio
async def test_propagation_between_two_processes(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    child = subprocess.Popen(  # noqa: ASYNC220 - started once, before the event loop has work
        [sys.executable, "-c", textwrap.dedent(CHILD), redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None

        # A missed change fails the test (the child is killed below), never hangs it.
        def readline() -> str:
            assert child.stdout is not None
            return child.stdout.readline()

        line = await asyncio.wait_for(asyncio.to_thread(readline), 20)
        assert line.strip() == "READY", line
        delays = []
        async with FeatureFlags(redis=redis_url) as flags:
            for pct in [*range(1, 21), 100]:
                sent = time.monotonic_ns()
                await flags.set_rollout("prop", pct)
                line = await asyncio.wait_for(asyncio.to_thread(readline), 10)
                word, seen_pct, seen_at = line.split()
                assert (word, int(seen_pct)) == ("SEEN", pct)
                delays.append((int(seen_at) - sent) / 1e6)
        _out, err = await asyncio.to_thread(child.communicate, timeout=20)
        assert child.returncode == 0, err
        delays.sort()
        # A generous bound: the 100 ms target is measured by the benchmark, not asserted here.
        assert delays[len(delays) // 2] < 1000, delays
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
