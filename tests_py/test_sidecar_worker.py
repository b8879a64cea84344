"""The worker (``sark_native.sidecar.serve`` and ``python -m sark_native.sidecar``): socket
permissions, malformed frames, pings while handlers block, graceful shutdown, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import sark_native
from sark_native._backend import Backend
from sark_native.exceptions import SidecarUnavailableError
from sark_native.sidecar import serve_async
from sidecar_apps import HANDLERS, Echo
from sidecar_helpers import (
    WorkerProcess,
    child_env,
    connect,
    frame,
    is_closed_by_peer,
    raw,
    recv_frame,
    wait_until,
)


@pytest.fixture
def worker(sock_dir: pathlib.Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess("sidecar_apps:Echo", sock_dir / "w.sock").wait_ready()
    try:
        yield w
    finally:
        w.stop()


def test_socket_is_0600_and_a_stale_socket_file_is_replaced(sock_dir: pathlib.Path) -> None:
    path = sock_dir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listened on, closed: what a killed worker leaves
    stale.close()
    w = WorkerProcess("sidecar_apps:Echo", path).wait_ready()
    try:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        with connect(path) as s:
            s.sendall(frame({"id": 1, "method": "echo", "params": "hi"}))
            assert recv_frame(s) == {"id": 1, "result": "hi"}
    finally:
        assert w.stop() == 0
    assert not path.exists()  # removed on the way out


def test_a_file_that_is_not_a_socket_is_not_replaced(sock_dir: pathlib.Path) -> None:
    path = sock_dir / "data.sock"
    path.write_text("precious")
    w = WorkerProcess("sidecar_apps:Echo", path)
    assert w.proc.wait(timeout=30) == 1
    assert "not a socket" in w.output()
    assert path.read_text() == "precious"


GARBAGE: dict[str, bytes] = {
    "zero length": b"\x00\x00\x00\x00",
    "length over the cap": (16 * 1024 * 1024 + 1).to_bytes(4, "big"),
    "invalid utf-8": raw(b'{"id": 1, "method": "echo\xff"}'),
    "invalid json": raw(b'{"id": 1, "method": '),
    "NaN": raw(b'{"id": 1, "method": "echo", "params": NaN}'),
    "json array": frame([1, "echo"]),
    "negative id": frame({"id": -1, "method": "echo"}),
    "id over u64": frame({"id": 2**64, "method": "echo"}),
    "string id": frame({"id": "1", "method": "echo"}),
    "bool id": raw(b'{"id": true, "method": "echo"}'),
    "method not a string": frame({"id": 1, "method": 5}),
    "no method": frame({"id": 1, "params": 1}),
}


@pytest.mark.parametrize("scenario", sorted(GARBAGE))
def test_garbage_closes_only_the_offending_connection(worker: WorkerProcess, scenario: str) -> None:
    with connect(worker.path) as good, connect(worker.path) as bad:
        good.sendall(frame({"id": 1, "method": "echo", "params": "before"}))
        assert recv_frame(good) == {"id": 1, "result": "before"}
        bad.sendall(GARBAGE[scenario])
        assert is_closed_by_peer(bad)
        good.sendall(frame({"id": 2, "method": "echo", "params": "after"}))
        assert recv_frame(good) == {"id": 2, "result": "after"}
    assert worker.proc.poll() is None
    assert "broke the protocol" in worker.output()


def test_pings_and_other_requests_flow_while_a_sync_handler_blocks(worker: WorkerProcess) -> None:
    with connect(worker.path) as s:
        s.sendall(frame({"id": 1, "method": "sleep", "params": {"seconds": 4, "value": "slept"}}))
        time.sleep(0.3)
        started = time.monotonic()
        s.sendall(frame({"id": 2, "method": "__ping__"}))
        ping = recv_frame(s)
        assert ping["id"] == 2
        assert ping["result"]["pid"] == worker.pid
        assert ping["result"]["in_flight"] == 1
        assert ping["result"]["oldest_age"] > 0.1
        s.sendall(frame({"id": 3, "method": "echo", "params": "meanwhile"}))
        assert recv_frame(s) == {"id": 3, "result": "meanwhile"}
        s.sendall(frame({"id": 4, "method": "aecho", "params": "async too"}))
        assert recv_frame(s) == {"id": 4, "result": "async too"}
        assert time.monotonic() - started < 3  # well before the sleep ends
        assert recv_frame(s) == {"id": 1, "result": "slept"}


def test_requests_without_params_get_none(worker: WorkerProcess) -> None:
    with connect(worker.path) as s:
        s.sendall(frame({"id": 7, "method": "echo"}))
        assert recv_frame(s) == {"id": 7, "result": None}
        s.sendall(frame({"id": 2**64 - 1, "method": "echo", "params": 1, "extra": "ignored"}))
        assert recv_frame(s) == {"id": 2**64 - 1, "result": 1}


def test_a_half_closed_connection_still_gets_its_answers(worker: WorkerProcess) -> None:
    with connect(worker.path) as s:
        s.sendall(frame({"id": 1, "method": "asleep", "params": {"seconds": 0.2, "value": "v"}}))
        s.shutdown(socket.SHUT_WR)
        assert recv_frame(s) == {"id": 1, "result": "v"}
        assert is_closed_by_peer(s)


@pytest.mark.asyncio
async def test_sigterm_lets_in_flight_requests_finish_then_exits_0(
    backend: Backend, worker: WorkerProcess
) -> None:
    async with sark_native.SidecarClient(worker.path, backend=backend, timeout=30) as c:
        calls = [
            asyncio.create_task(c.request("sleep", {"seconds": 0.5, "value": i})) for i in range(3)
        ]

        async def in_flight() -> int:
            info = await c.request("__ping__")
            return int(info["in_flight"])

        deadline = time.monotonic() + 10
        while await in_flight() < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        worker.proc.send_signal(signal.SIGTERM)
        assert await asyncio.gather(*calls) == [0, 1, 2]
        await wait_until(lambda: worker.proc.poll() is not None, what="the worker exits")
    assert worker.proc.returncode == 0
    assert not worker.path.exists()


@pytest.mark.asyncio
async def test_a_grace_period_that_runs_out_ends_the_worker_anyway(
    backend: Backend, sock_dir: pathlib.Path
) -> None:
    w = WorkerProcess("sidecar_apps:Echo", sock_dir / "g.sock", "--grace-period", "0.5")
    w.wait_ready()
    try:
        async with sark_native.SidecarClient(w.path, backend=backend, timeout=30) as c:
            stuck = asyncio.create_task(c.request("hang"))
            await asyncio.sleep(0.2)
            w.proc.send_signal(signal.SIGTERM)
            with pytest.raises(SidecarUnavailableError):
                await stuck
            await wait_until(lambda: w.proc.poll() is not None, what="the worker exits")
        assert w.proc.returncode == 1
        assert "grace period" in w.output()
    finally:
        w.stop()


def test_eof_on_stdin_stops_a_worker_that_watches_it(sock_dir: pathlib.Path) -> None:
    w = WorkerProcess(
        "sidecar_apps:Echo", sock_dir / "s.sock", "--watch-stdin", stdin=subprocess.PIPE
    )
    w.wait_ready()
    assert w.proc.stdin is not None
    w.proc.stdin.close()  # the supervisor is gone
    assert w.proc.wait(timeout=30) == 0
    assert "stdin closed" in w.output()


def test_a_worker_whose_supervisor_is_already_gone_exits(sock_dir: pathlib.Path) -> None:
    env = child_env(SARK_NATIVE_SIDECAR_PARENT="1" if os.getpid() != 1 else "2")
    w = WorkerProcess(
        "sidecar_apps:Echo", sock_dir / "o.sock", "--watch-stdin", stdin=subprocess.PIPE, env=env
    )
    try:
        assert w.proc.wait(timeout=30) == 0
        assert "already gone" in w.output()
    finally:
        w.stop()


@pytest.mark.parametrize(
    ("app", "method", "expected"),
    [
        ("sidecar_apps:HANDLERS", "double", 42),  # a dict
        ("sidecar_apps:make_handlers", "source", "factory"),  # a factory function
        ("sidecar_apps:Echo", "echo", 21),  # a class, instantiated
    ],
)
def test_the_cli_loads_dicts_factories_and_classes(
    sock_dir: pathlib.Path, app: str, method: str, expected: Any
) -> None:
    w = WorkerProcess(app, sock_dir / "c.sock").wait_ready()
    try:
        with connect(w.path) as s:
            s.sendall(frame({"id": 1, "method": method, "params": 21}))
            assert recv_frame(s) == {"id": 1, "result": expected}
    finally:
        assert w.stop() == 0


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("sidecar_apps:Broken", "broken on purpose"),
        ("no_such_module_here:app", "No module named"),
        ("sidecar_apps", "module:attr"),
        ("sidecar_apps:nothing", "no attribute"),
    ],
)
def test_an_app_that_does_not_load_exits_2_with_the_reason(
    sock_dir: pathlib.Path, app: str, message: str
) -> None:
    w = WorkerProcess(app, sock_dir / "b.sock")
    assert w.proc.wait(timeout=30) == 2
    assert message in w.output()
    assert not w.path.exists()


def test_the_cli_refuses_a_socket_path_over_the_os_limit(sock_dir: pathlib.Path) -> None:
    long = sock_dir / ("x" * 120 + ".sock")
    w = WorkerProcess("sidecar_apps:Echo", long)
    assert w.proc.wait(timeout=30) == 2
    assert "OS limit" in w.output()


@pytest.mark.asyncio
async def test_serve_async_in_process_with_a_dict_handler(sock_dir: pathlib.Path) -> None:
    path = sock_dir / "inproc.sock"
    server = asyncio.create_task(serve_async(HANDLERS, path, handle_signals=False))
    await wait_until(path.exists, what="the socket")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with sark_native.SidecarClient(path) as c:
        assert await c.request("double", 21) == 42
        assert await c.request("triple", "ab") == "ababab"
        slow = asyncio.create_task(c.request("nap", 0.3))
        deadline = time.monotonic() + 10
        while (await c.request("__ping__"))["in_flight"] < 1:
            assert time.monotonic() < deadline
        server.cancel()  # a graceful stop: what is in flight finishes
        assert await slow == "rested"
        with contextlib.suppress(asyncio.CancelledError):
            await server
    assert not path.exists()


@pytest.mark.asyncio
async def test_serve_refuses_bad_handlers_and_paths(sock_dir: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="OS limit"):
        await serve_async(Echo(), "/tmp/" + "y" * 200)
    with pytest.raises(TypeError, match="is a class"):
        await serve_async(Echo, sock_dir / "x.sock")
    with pytest.raises(TypeError, match="not callable"):
        await serve_async({"x": 1}, sock_dir / "x.sock")
    with pytest.raises(ValueError, match="reserved"):
        await serve_async({"__ping__": print}, sock_dir / "x.sock")
    with pytest.raises(ValueError, match="no public callable"):
        await serve_async(object(), sock_dir / "x.sock")
    assert not (sock_dir / "x.sock").exists()


def test_python_dash_m_help_lists_the_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sark_native.sidecar", "--help"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    for option in ("--socket", "--max-frame", "--watch-stdin", "--grace-period"):
        assert option in done.stdout


def test_frames_split_across_writes_or_batched_in_one(worker: WorkerProcess) -> None:
    with connect(worker.path) as s:
        s.sendall(
            frame({"id": 1, "method": "echo", "params": "a"})
            + frame({"id": 2, "method": "echo", "params": "b"})
        )
        answers = [recv_frame(s), recv_frame(s)]
        assert sorted(a["id"] for a in answers) == [1, 2]
        one = frame({"id": 3, "method": "echo", "params": "byte by byte"})
        for i in range(len(one)):
            s.sendall(one[i : i + 1])
        assert recv_frame(s) == {"id": 3, "result": "byte by byte"}
