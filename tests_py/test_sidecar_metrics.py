"""Sidecar metrics: requests, errors by type, restarts, in flight and the latency histogram, read
by the Collector at scrape time (counters are process-wide: the tests compare before and after)."""

from __future__ import annotations

import asyncio
import math
import os
import pathlib
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import sark_native
from sark_native import metrics
from sark_native._backend import Backend
from sark_native.exceptions import (
    SidecarProtocolError,
    SidecarRemoteError,
    SidecarTimeoutError,
    SidecarUnavailableError,
)
from sidecar_helpers import FakeConnection, FakeServer, WorkerProcess, wait_until


@pytest.fixture
def worker(sock_dir: pathlib.Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess("sidecar_apps:Echo", sock_dir / "m.sock").wait_ready()
    try:
        yield w
    finally:
        w.stop()


class Scrape:
    def __init__(self, backend: Backend) -> None:
        self.registry = CollectorRegistry()
        metrics.register(self.registry)
        self.labels = {"implementation": backend}

    def get(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {**self.labels, **labels})
        return value or 0.0

    def snapshot(self) -> dict[str, float]:
        out = {
            "requests": self.get("sidecar_requests_total"),
            "count": self.get("sidecar_request_duration_seconds_count"),
            "restarts": self.get("sidecar_restarts_total"),
            "in_flight": self.get("sidecar_in_flight"),
        }
        for kind in ("timeout", "unavailable", "protocol", "remote"):
            out[kind] = self.get("sidecar_errors_total", error_type=kind)
        return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


@pytest.mark.asyncio
async def test_requests_errors_and_durations_are_counted(
    backend: Backend, worker: WorkerProcess, sock_dir: pathlib.Path
) -> None:
    scrape = Scrape(backend)
    before = scrape.snapshot()
    async with sark_native.SidecarClient(worker.path, backend=backend) as c:
        assert await c.request("echo", 1) == 1
        assert await c.request("aecho", 2) == 2
        with pytest.raises(SidecarRemoteError):
            await c.request("fail", "x")
        with pytest.raises(SidecarTimeoutError):
            await c.request("asleep", {"seconds": 0.5}, timeout=0.05)
        with pytest.raises(TypeError):
            await c.request("echo", math.nan)  # bad input: not a request
        during = asyncio.create_task(c.request("asleep", {"seconds": 1.0, "value": 3}))
        await asyncio.sleep(0.1)
        assert scrape.get("sidecar_in_flight") == before["in_flight"] + 1
        assert await during == 3
    async with sark_native.SidecarClient(sock_dir / "nobody.sock", backend=backend) as c:
        with pytest.raises(SidecarUnavailableError):
            await c.request("echo", 1)

    def garbage(conn: FakeConnection, request: dict[str, Any]) -> None:
        conn.write(b"\x00\x00\x00\x00")

    async with (
        FakeServer(sock_dir / "fake.sock", garbage) as server,
        sark_native.SidecarClient(server.path, backend=backend) as c,
    ):
        with pytest.raises(SidecarProtocolError):
            await c.request("echo", 1)
    change = delta(before, scrape.snapshot())
    assert change == {
        "requests": 7,
        "count": 7,
        "restarts": 0,
        "in_flight": 0,
        "timeout": 1,
        "unavailable": 1,
        "protocol": 1,
        "remote": 1,
    }
    # Buckets from 50 us to 10 s.
    for le in ("5e-05", "0.001", "10.0", "+Inf"):
        assert (
            scrape.registry.get_sample_value(
                "sidecar_request_duration_seconds_bucket", {**scrape.labels, "le": le}
            )
            is not None
        )
    assert scrape.get("sidecar_request_duration_seconds_sum") > 0


@pytest.mark.asyncio
async def test_supervised_requests_and_restarts_are_counted(backend: Backend) -> None:
    scrape = Scrape(backend)
    before = scrape.snapshot()
    async with sark_native.Sidecar("sidecar_apps:Echo", backend=backend) as sc:
        assert await sc.request("echo", 1) == 1  # its start-up pings are not requests
        (pid,) = sc.pids
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: sc.restarts == 1 and sc.stats()["live"] == 1, what="restart")
        assert await sc.request("echo", 2) == 2
    change = delta(before, scrape.snapshot())
    assert change["requests"] == 2
    assert change["restarts"] == 1
    assert change["in_flight"] == 0
    text = generate_latest(scrape.registry).decode()
    assert f'sidecar_restarts_total{{implementation="{backend}"}}' in text
