"""Helpers of the sidecar tests: worker processes, raw frames, a scriptable fake server, process
checks. Real processes and real sockets throughout."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from conftest import die_with_parent
from sark_native.sidecar._protocol import FrameReader

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests_py"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a worker started by a test: it imports sark_native and sidecar_apps
    the way this process does."""
    env = dict(os.environ)
    paths = [str(ROOT / "python"), str(TESTS), *(p for p in sys.path if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class WorkerProcess:
    """``python -m sark_native.sidecar APP --socket PATH ...`` in a subprocess; output to a file."""

    def __init__(
        self,
        app: str,
        path: pathlib.Path,
        *args: str,
        stdin: int | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self.log = path.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sark_native.sidecar", app, "--socket", str(path), *args],
                stdin=stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env or child_env(),
                preexec_fn=die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> WorkerProcess:
        """Returns once the socket accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.proc.returncode}):\n{self.output()}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(self.path))
                return self
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"the worker did not start within {timeout} s:\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return self.proc.returncode


# --- raw frames ---------------------------------------------------------------------------------


def raw(body: bytes) -> bytes:
    """A frame with ``body`` as it is."""
    return len(body).to_bytes(4, "big") + body


def frame(obj: Any) -> bytes:
    """A frame of ``obj`` as JSON."""
    return raw(json.dumps(obj).encode())


def connect(path: pathlib.Path, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def recv_frame(s: socket.socket) -> Any:
    size = int.from_bytes(recv_exact(s, 4), "big")
    return json.loads(recv_exact(s, size))


def is_closed_by_peer(s: socket.socket) -> bool:
    """True when the peer closed the connection (EOF or reset) within the socket's timeout."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


# --- a scriptable fake worker -------------------------------------------------------------------


class FakeConnection(asyncio.Protocol):
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.reader = FrameReader(2**32 - 1)
        self.transport: asyncio.Transport | None = None
        self.requests: list[dict[str, Any]] = []
        self.number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1
        self.number = self.server.connections
        self.server.open.append(self)

    def data_received(self, data: bytes) -> None:
        self.server.bytes_received += len(data)
        for body in self.reader.feed(data):
            request = json.loads(body)
            self.requests.append(request)
            self.server.respond(self, request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.server.open:
            self.server.open.remove(self)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def answer(self, request: dict[str, Any], result: Any) -> None:
        self.write(frame({"id": request["id"], "result": result}))

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()


def echo(conn: FakeConnection, request: dict[str, Any]) -> None:
    conn.answer(request, request.get("params"))


class FakeServer:
    """An in-process Unix socket server that answers as ``respond(connection, request)`` says:
    the garbage a real worker never sends."""

    def __init__(
        self,
        path: pathlib.Path,
        respond: Callable[[FakeConnection, dict[str, Any]], None] = echo,
    ) -> None:
        self.path = path
        self.respond = respond
        self.connections = 0
        self.bytes_received = 0
        self.open: list[FakeConnection] = []
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: FakeConnection(self), str(self.path))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self.open):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0.01)
        await asyncio.wait_for(self._server.wait_closed(), 5)


# --- processes ----------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as gone)."""
    stat = pathlib.Path(f"/proc/{pid}/stat")
    if pathlib.Path("/proc/self/stat").exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """Waits until none of ``pids`` runs; returns those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


async def wait_until(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Polls ``check`` until it holds (a generous bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        await asyncio.sleep(0.02)
