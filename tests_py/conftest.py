"""Shared fixtures: the ``backend`` parameter that runs every contract test on both paths, and a
real ``redis-server`` for the rollout tests."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import cast

import pytest

import sark_native
from sark_native import _backend
from sark_native._backend import Backend

# In the normal run a missing extension is a failure, not a reason to skip: CI must prove the
# Rust path. Only the run with SARK_NATIVE_BACKEND=python drops the "rust" parameter.
if not sark_native.RUST_AVAILABLE and os.environ.get(_backend.ENV_VAR) != "python":
    raise RuntimeError(
        "the Rust extension is not importable "
        f"({_backend.UNAVAILABLE_REASON}); build it with `make build`, "
        f"or run with {_backend.ENV_VAR}=python to test the pure-Python path only"
    )

BACKENDS = ["rust", "python"] if sark_native.RUST_AVAILABLE else ["python"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each test that takes this fixture runs once per available backend."""
    return cast(Backend, request.param)


@pytest.fixture
def sock_dir() -> Iterator[pathlib.Path]:
    """A short private directory for Unix sockets: ``tmp_path`` can be longer than the 107 bytes
    a socket path may have."""
    path = pathlib.Path(
        tempfile.mkdtemp(prefix="sn-", dir="/tmp" if os.path.isdir("/tmp") else None)
    )
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class ServerProcess:
    """A server subprocess of the tests: output to ``self.log``, dies with pytest, started by
    ``_spawn`` (which waits until ``ready()``) and stopped with SIGTERM (SIGKILL after 15 s)."""

    log: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str], ready: Callable[[], bool], timeout: float) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                output = self.log.read_text(errors="replace")
                raise RuntimeError(f"{' '.join(argv[:3])} did not start; its output:\n{output}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        """The exit code (None when not running)."""
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.proc = None
        return code


class RedisServer(ServerProcess):
    """A real ``redis-server`` on a free loopback port, in its own temp dir, no persistence.

    ``make test`` installs the binary (``make redis``); it is found on PATH, next to the venv's
    python (``.venv/bin/redis-server``) or at ``$SARK_NATIVE_REDIS_SERVER``.
    """

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.binary = find_redis_server()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = directory / "redis.log"

    def start(self) -> None:
        self._spawn(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            self.ping,
            timeout=10,
        )

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: an outage with no goodbye to the clients."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            assert s.recv(16).startswith(b"+OK")


def die_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM when pytest dies (a killed run must not
    leave servers behind)."""
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def find_redis_server() -> str:
    candidates = [
        os.environ.get("SARK_NATIVE_REDIS_SERVER"),
        shutil.which("redis-server"),
        str(pathlib.Path(sys.executable).parent / "redis-server"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("redis-server not found: run `make redis` (the README's set-up installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session, stopped at the end."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied before the test."""
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def private_redis(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may kill and restart."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Policyd(ServerProcess):
    """A real ``python -m sark_native.policyd`` on a Unix socket in a temp dir, stopped with
    SIGTERM at the end. ``reset()`` empties it (no policies, ``data == {}``) between tests."""

    def __init__(self, directory: pathlib.Path, *extra: str) -> None:
        self.directory = directory
        self.socket = directory / "policyd.sock"
        self.url = f"unix://{self.socket}"
        self.extra = extra
        self.log = directory / "policyd.log"

    def start(self) -> None:
        self._spawn(
            [
                sys.executable,
                "-m",
                "sark_native.policyd",
                "--socket",
                str(self.socket),
                *self.extra,
            ],
            self.healthy,
            timeout=20,
        )

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        import http.client

        conn = http.client.HTTPConnection("policyd", timeout=10)
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.settimeout(10)
        try:
            conn.sock.connect(str(self.socket))
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/health")[0] == 200
        except OSError:
            return False

    def reset(self) -> None:
        import json

        status, body = self.request("GET", "/v1/policies")
        assert status == 200, body
        for policy in json.loads(body)["result"]:
            assert self.request("DELETE", f"/v1/policies/{policy['id']}")[0] == 200
        assert self.request("PUT", "/v1/data", b"{}")[0] == 204


@pytest.fixture(scope="session")
def policyd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Policyd]:
    """One policyd for the session (time limit 0.5 s, like the native engines of the tests)."""
    server = Policyd(tmp_path_factory.mktemp("policyd"), "--time-limit", "0.5")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def opa_url(policyd: Policyd) -> str:
    """The session's policyd, emptied before the test."""
    policyd.reset()
    return policyd.url
