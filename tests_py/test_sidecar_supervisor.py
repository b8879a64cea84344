"""Sidecar, the supervisor: real worker processes killed, hung and frozen on purpose; every
request ends with its own answer or a typed sark_native exception, and no process outlives it."""

# ruff: noqa: ASYNC240 - a stat or two of the socket directory in a test

from __future__ import annotations

import asyncio
import collections
import json
import os
import pathlib
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

import sark_native
from sark_native._backend import Backend
from sark_native.exceptions import (
    SidecarRemoteError,
    SidecarTimeoutError,
    SidecarUnavailableError,
)
from sidecar_helpers import child_env, pid_alive, wait_gone, wait_until


def sidecar(backend: Backend, app: str = "sidecar_apps:Echo", **options: Any) -> Any:
    return sark_native.Sidecar(app, backend=backend, **options)


def processes_mentioning(text: str) -> list[int]:
    """Pids of running processes whose command line contains ``text``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.asyncio
async def test_start_spread_and_close(backend: Backend) -> None:
    sc = sidecar(backend, workers=2)
    assert isinstance(sc, sark_native.Sidecar)
    async with sc:
        pids = sc.pids
        assert len(set(pids)) == 2
        directory = sc.socket_dir
        assert directory is not None
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        sockets = sorted(pathlib.Path(directory).glob("*.sock"))
        assert len(sockets) == 2
        assert all(stat.S_IMODE(os.stat(s).st_mode) == 0o600 for s in sockets)
        assert await sc.request("echo", {"x": [1, 2]}) == {"x": [1, 2]}
        served_by = await asyncio.gather(*(sc.request("pid") for _ in range(100)))
        assert set(served_by) == set(pids)  # both workers took requests
        stats = sc.stats()
        assert stats["live"] == 2
        assert stats["restarts"] == 0
        assert stats["in_flight"] == 0
    assert sc.pids == []
    assert wait_gone(pids) == []
    assert not pathlib.Path(directory).exists()
    with pytest.raises(SidecarUnavailableError, match="closed"):
        await sc.request("echo", 1)
    await sc.aclose()  # idempotent


@pytest.mark.asyncio
async def test_requests_go_to_the_worker_with_the_fewest_in_flight(
    backend: Backend,
) -> None:
    async with sidecar(backend, workers=2, timeout=30) as sc:
        busy = asyncio.create_task(sc.request("sleep", {"seconds": 1.0, "value": "done"}))
        await asyncio.sleep(0.1)
        others = [await sc.request("pid") for _ in range(10)]
        assert len(set(others)) == 1  # all to the idle worker...
        assert len(set(sc.pids) - set(others)) == 1  # ...none to the busy one
        assert await busy == "done"


@pytest.mark.asyncio
async def test_sigkill_mid_request_fails_its_callers_at_once_and_restarts(
    backend: Backend,
) -> None:
    async with sidecar(backend, workers=1, timeout=30) as sc:
        (pid,) = sc.pids
        calls = [
            asyncio.create_task(sc.request("sleep", {"seconds": 10, "value": i})) for i in range(3)
        ]
        await asyncio.sleep(0.3)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, SidecarUnavailableError) for r in results), results
        assert time.monotonic() - killed < 5  # at once, not after the 10 s sleep
        # The next request goes to the restarted worker (it waits for it if need be).
        assert await sc.request("echo", "after") == "after"
        assert time.monotonic() - killed < 10
        assert sc.restarts == 1
        (new_pid,) = sc.pids
        assert new_pid != pid
        assert not pid_alive(pid)
        assert sc.stats()["per_worker"][0]["last_exit"] == "was killed by SIGKILL"


@pytest.mark.asyncio
async def test_a_worker_that_exits_is_restarted(backend: Backend) -> None:
    async with sidecar(backend, workers=1) as sc:
        with pytest.raises(SidecarUnavailableError):
            await sc.request("exit", 9)
        assert await sc.request("echo", 1) == 1
        assert sc.restarts == 1
        assert sc.stats()["per_worker"][0]["last_exit"] == "exited with status 9"


@pytest.mark.asyncio
async def test_a_hung_handler_is_killed_after_hang_timeout(backend: Backend) -> None:
    async with sidecar(backend, workers=1, timeout=30, hang_timeout=1.0, ping_interval=0.2) as sc:
        (pid,) = sc.pids
        started = time.monotonic()
        with pytest.raises(SidecarUnavailableError, match="hang_timeout"):
            await sc.request("hang")
        assert time.monotonic() - started < 15
        await wait_until(lambda: sc.stats()["live"] == 1, what="a live worker")
        assert sc.restarts == 1
        assert await sc.request("echo", "fresh") == "fresh"
        assert sc.pids != [pid]


@pytest.mark.asyncio
async def test_a_worker_that_answers_nothing_times_out_then_is_restarted(
    backend: Backend,
) -> None:
    async with sidecar(backend, workers=1, ping_interval=0.2, ping_timeout=1.0, timeout=10) as sc:
        (pid,) = sc.pids
        with pytest.raises(SidecarTimeoutError):
            await sc.request("freeze", timeout=0.5)  # blocks the worker's event loop
        await wait_until(lambda: sc.restarts >= 1, what="a restart")
        assert await sc.request("echo", "thawed") == "thawed"
        assert pid not in sc.pids
        assert not pid_alive(pid)


@pytest.mark.asyncio
async def test_with_no_live_worker_a_request_waits_then_is_unavailable(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    env = {"SIDECAR_TEST_MARKER": str(tmp_path / "started")}
    async with sidecar(backend, "sidecar_apps:once", env=env, ping_interval=0.2) as sc:
        (pid,) = sc.pids
        os.kill(pid, signal.SIGKILL)  # every restart fails: the worker stays down
        await wait_until(lambda: sc.stats()["live"] == 0, what="the supervisor sees it")
        started = time.monotonic()
        with pytest.raises(SidecarUnavailableError, match="no live worker"):
            await sc.request("echo", 1, timeout=1.0)
        assert time.monotonic() - started >= 0.5  # it did wait for a worker
        await wait_until(lambda: sc.restarts >= 2, what="restart attempts")
        # Backoff: attempts at 0, 0.1, 0.2, 0.4, 0.8 s after each failure (each failure takes an
        # interpreter start), so only a handful in 2 s; without it there would be a dozen or more.
        await asyncio.sleep(max(0.0, started + 2.0 - time.monotonic()))
        assert sc.restarts <= 7


@pytest.mark.asyncio
async def test_an_app_that_fails_to_start_reports_its_output(backend: Backend) -> None:
    sc = sidecar(backend, "sidecar_apps:Broken", workers=2)
    with pytest.raises(SidecarUnavailableError, match="broken on purpose"):
        await sc.start()
    assert sc.pids == []
    assert sc.socket_dir is not None
    assert not pathlib.Path(sc.socket_dir).exists()
    assert wait_gone(processes_mentioning(sc.socket_dir)) == []


@pytest.mark.asyncio
async def test_a_worker_that_does_not_start_in_time_is_killed(backend: Backend) -> None:
    sc = sidecar(backend, "sidecar_apps:slow_start", start_timeout=1.0)
    with pytest.raises(SidecarUnavailableError, match="did not answer a ping within 1 s"):
        await sc.start()
    assert sc.socket_dir is not None
    assert wait_gone(processes_mentioning(sc.socket_dir)) == []
    assert not pathlib.Path(sc.socket_dir).exists()


@pytest.mark.asyncio
async def test_close_lets_in_flight_requests_finish(backend: Backend) -> None:
    sc = sidecar(backend, workers=1)
    await sc.start()
    (pid,) = sc.pids
    call = asyncio.create_task(sc.request("asleep", {"seconds": 0.5, "value": "finished"}))
    await asyncio.sleep(0.2)
    await sc.aclose()
    assert await call == "finished"
    assert not pid_alive(pid)


@pytest.mark.asyncio
async def test_env_cwd_and_bad_arguments(backend: Backend, tmp_path: pathlib.Path) -> None:
    async with sidecar(backend, env={"SIDECAR_X": "42"}, cwd=tmp_path) as sc:
        assert await sc.request("env", "SIDECAR_X") == {"value": "42", "cwd": str(tmp_path)}
    with pytest.raises(ValueError, match="module:attr"):
        sidecar(backend, "no_colon")
    with pytest.raises(ValueError, match="workers"):
        sidecar(backend, workers=0)
    with pytest.raises(ValueError, match="ping_interval"):
        sidecar(backend, ping_interval=-1)
    with pytest.raises(RuntimeError, match="start"):
        await sidecar(backend).request("echo", 1)


GATEWAY = """
import asyncio, json, sys
import sark_native

async def main():
    sc = sark_native.Sidecar("sidecar_apps:Echo", workers=2, backend=sys.argv[1])
    await sc.start()
    assert await sc.request("echo", 1) == 1
    print(json.dumps({"pids": sc.pids, "dir": sc.socket_dir}), flush=True)
    if sys.argv[2] == "hang":
        await asyncio.sleep(3600)
    # else: leave without closing it; the atexit handler stops the workers

asyncio.run(main())
"""


def run_gateway(backend: Backend, mode: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(GATEWAY), backend, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise AssertionError(
            f"the gateway did not start: {proc.stderr.read() if proc.stderr else ''}"
        )
    return proc, json.loads(line)


def test_a_killed_gateway_leaves_no_orphan_workers(backend: Backend) -> None:
    proc, info = run_gateway(backend, "hang")
    try:
        assert len(info["pids"]) == 2
        assert all(pid_alive(p) for p in info["pids"])
        proc.kill()  # SIGKILL: no cleanup code runs in the gateway
        proc.wait(timeout=30)
        assert wait_gone(info["pids"]) == []
        # The workers shut down gracefully (PR_SET_PDEATHSIG / stdin EOF): sockets removed.
        assert list(pathlib.Path(info["dir"]).glob("*.sock")) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        shutil.rmtree(info["dir"], ignore_errors=True)


def test_an_unclosed_sidecar_is_stopped_at_interpreter_exit(backend: Backend) -> None:
    proc, info = run_gateway(backend, "leave")
    try:
        assert proc.wait(timeout=60) == 0
        assert wait_gone(info["pids"]) == []
        assert not pathlib.Path(info["dir"]).exists()
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.asyncio
async def test_fault_injection_soak(backend: Backend) -> None:
    """A few hundred mixed requests while workers are SIGKILLed at random: every request ends
    with its own answer or a typed sark_native exception."""
    rng = random.Random(20260)
    total = 400
    outcomes: collections.Counter[str] = collections.Counter()

    async def one(i: int) -> None:
        kind = rng.choice(["echo", "aecho", "asleep", "sleep", "timeout", "fail"])
        try:
            if kind in ("echo", "aecho"):
                assert await sc.request(kind, {"i": i}) == {"i": i}
            elif kind in ("asleep", "sleep"):
                params = {"seconds": rng.uniform(0, 0.03), "value": i}
                assert await sc.request(kind, params) == i
            elif kind == "timeout":
                params = {"seconds": 0.5, "value": i}
                await sc.request("asleep", params, timeout=0.05)
                raise AssertionError("a 0.5 s request answered within 0.05 s")
            else:
                await sc.request("fail", i)
                raise AssertionError("fail did not fail")
            outcomes["answer"] += 1
        except SidecarRemoteError as exc:
            assert kind == "fail"
            remote = (exc.remote_type, exc.remote_message)
            assert remote == ("ValueError", str(i))
            outcomes["remote"] += 1
        except SidecarTimeoutError:
            assert kind == "timeout"
            outcomes["timeout"] += 1
        except SidecarUnavailableError:
            outcomes["unavailable"] += 1  # its worker was killed under it

    async def killer() -> None:
        for _ in range(4):
            await asyncio.sleep(rng.uniform(0.15, 0.35))
            pids = sc.pids
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                outcomes["kills"] += 1

    limit = asyncio.Semaphore(20)

    async def paced(i: int) -> None:
        async with limit:
            await asyncio.sleep(rng.uniform(0, 0.1))  # spread over the kills (about 1.5 s)
            await one(i)

    async with sidecar(backend, workers=2, timeout=20, ping_interval=0.2) as sc:
        await asyncio.gather(killer(), *(paced(i) for i in range(total)))
        requests = sum(n for k, n in outcomes.items() if k != "kills")
        assert requests == total, outcomes
        assert outcomes["answer"] > total // 3, outcomes
        assert outcomes["kills"] >= 1
        await wait_until(
            lambda: sc.restarts >= outcomes["kills"] and sc.stats()["live"] == 2,
            what="both workers restarted and live",
        )
        assert await asyncio.gather(*(sc.request("echo", j) for j in range(50))) == list(range(50))
