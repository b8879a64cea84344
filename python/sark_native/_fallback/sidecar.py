"""The pure-Python twin of the native sidecar: an asyncio Unix-socket client (``PySidecarClient``)
and a process supervisor (``PySidecar``), with the contract of ``docs/sidecar.md``.

The client pipelines requests over a small pool of connections and matches responses by id; the
supervisor spawns ``python -m sark_native.sidecar`` workers in a private directory, routes each
request to the live worker with the fewest in flight, pings them, and restarts the ones that die
or hang. Metrics are plain integers per thread, summed at scrape time (:func:`sidecar_metrics`).
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import collections
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from ..exceptions import (
    SidecarError,
    SidecarProtocolError,
    SidecarRemoteError,
    SidecarTimeoutError,
    SidecarUnavailableError,
)
from ..sidecar._protocol import (
    DEFAULT_MAX_FRAME,
    PING,
    FrameReader,
    PreparedRequest,
    check_max_frame,
    check_positive,
    check_socket_path,
    decode_frame,
    parse_response,
    prepare_request,
)
from ..sidecar._worker import PARENT_ENV

__all__ = [
    "BUCKETS",
    "PySidecar",
    "PySidecarClient",
    "sidecar_metrics",
]

logger = logging.getLogger("sark_native.sidecar")

#: Upper bounds (seconds) of the request duration histogram: 50 us to 10 s.
BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Reconnect backoff of the client: 10 ms after the first failed connect, doubling to 1 s.
CONNECT_BACKOFF = (0.01, 1.0)
#: Restart backoff of the supervisor once a worker keeps dying: 0.1 s doubling to 5 s.
RESTART_BACKOFF = (0.1, 5.0)
#: A worker that was ready for at least this long before dying is restarted at once.
STABLE_AFTER = 1.0
#: After SIGKILL, how long to wait for the exit before giving up on a process.
KILL_WAIT = 5.0
#: The worker gets its grace period; the supervisor SIGKILLs this much later.
KILL_MARGIN = 1.0
#: Lines of each worker's output kept for error messages.
OUTPUT_TAIL = 40

_ERROR_KINDS: tuple[tuple[type[SidecarError], str], ...] = (
    (SidecarTimeoutError, "timeout"),
    (SidecarUnavailableError, "unavailable"),
    (SidecarProtocolError, "protocol"),
    (SidecarRemoteError, "remote"),
)

# --- metrics ------------------------------------------------------------------------------------


class _Counters:
    """One thread's counters: only that thread writes them, the Collector sums them all."""

    __slots__ = (
        "buckets",
        "in_flight",
        "protocol",
        "remote",
        "requests",
        "restarts",
        "sum",
        "timeout",
        "unavailable",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.timeout = 0
        self.unavailable = 0
        self.protocol = 0
        self.remote = 0
        self.restarts = 0
        self.in_flight = 0
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def error(self, exc: SidecarError) -> None:
        for cls, kind in _ERROR_KINDS:
            if isinstance(exc, cls):
                setattr(self, kind, getattr(self, kind) + 1)
                return

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


_counters_lock = threading.Lock()
_all_counters: list[_Counters] = []
_local = threading.local()


def _counters() -> _Counters:
    try:
        counters: _Counters = _local.counters
    except AttributeError:
        counters = _local.counters = _Counters()
        with _counters_lock:
            _all_counters.append(counters)
    return counters


class _PyMeter:
    """How a supervisor counts its requests and restarts on the Python path."""

    @staticmethod
    def start() -> None:
        counters = _counters()
        counters.requests += 1
        counters.in_flight += 1

    @staticmethod
    def finish(seconds: float, exc: BaseException | None) -> None:
        counters = _counters()
        counters.in_flight -= 1
        if isinstance(exc, SidecarError):
            counters.error(exc)
        counters.observe(seconds)

    @staticmethod
    def restart() -> None:
        _counters().restarts += 1


class _NativeMeter:
    """The same on the native path: the counters are the extension's atomics."""

    def __init__(self, native: Any) -> None:
        self._started = native._sidecar_request_started
        self._finished = native._sidecar_request_finished
        self._restarted = native._sidecar_restarted

    def start(self) -> None:
        self._started()

    def finish(self, seconds: float, exc: BaseException | None) -> None:
        kind = None
        if isinstance(exc, SidecarError):
            kind = next((k for cls, k in _ERROR_KINDS if isinstance(exc, cls)), None)
        self._finished(seconds, kind)

    def restart(self) -> None:
        self._restarted()


def sidecar_metrics() -> dict[str, Any]:
    """The Python path's counters, summed over threads (the shape the Collector reads)."""
    with _counters_lock:
        every = list(_all_counters)
    buckets = [0] * (len(BUCKETS) + 1)
    for c in every:
        for i, n in enumerate(c.buckets):
            buckets[i] += n
    return {
        "requests": sum(c.requests for c in every),
        "errors": {kind: sum(getattr(c, kind) for c in every) for _, kind in _ERROR_KINDS},
        "restarts": sum(c.restarts for c in every),
        "in_flight": sum(c.in_flight for c in every),
        "bounds": list(BUCKETS),
        "buckets": buckets,
        "sum": sum(c.sum for c in every),
    }


# --- the client ---------------------------------------------------------------------------------


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


#: What ``_call(..., unsent_ok=True)`` returns when no connection could take the request.
UNSENT: Any = object()


def _expire(fut: asyncio.Future[Any], method: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(SidecarTimeoutError(f"no answer to {method!r} within {timeout:g} s"))


def _give_up(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class _Slots:
    """The in-flight bound: a FIFO semaphore whose waits end at a deadline.

    (Not ``asyncio.wait_for(semaphore.acquire())``: before Python 3.12 a timeout racing a grant
    can lose the permit.)
    """

    __slots__ = ("free", "waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: collections.deque[asyncio.Future[bool]] = collections.deque()

    async def acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> bool:
        """True once a slot is ours; False when ``deadline`` passes first."""
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        fut: asyncio.Future[bool] = loop.create_future()
        self.waiters.append(fut)
        handle = loop.call_at(deadline, _give_up, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.release()  # granted as we were cancelled: hand it on
            raise
        finally:
            handle.cancel()
            with contextlib.suppress(ValueError):
                self.waiters.remove(fut)

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(True)  # handed over directly
                return
        self.free += 1


class _Conn(asyncio.Protocol):
    """One pipelined connection: requests written as they come, responses matched by id."""

    def __init__(self, client: PySidecarClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.reader = FrameReader(client.max_frame)
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self.paused = False
        self._writable: asyncio.Future[None] | None = None
        #: Resolved once the transport is closed (``aclose`` waits for it).
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            for body in self.reader.feed(data):
                self._deliver(body)
        except SidecarProtocolError as exc:
            self.fail(SidecarProtocolError, f"{self.client.socket_path}: {exc}; connection dropped")

    def _deliver(self, body: bytes) -> None:
        resp_id, ok, value = parse_response(decode_frame(body))
        fut = self.pending.pop(resp_id, None)
        if fut is None:
            if resp_id >= self.client._next_id:
                raise SidecarProtocolError(f"a response for id {resp_id}, which was never issued")
            # Issued, but nobody waits any more (timed out, cancelled): dropped, never handed on.
            self.client.late_answers += 1
            return
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(SidecarRemoteError(*value))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.dropped(exc)

    def dropped(self, exc: BaseException | None = None) -> None:
        """The peer closed the connection (or a write to it failed): its callers get
        ``SidecarUnavailableError`` and the supervisor, if any, hears of it."""
        if self.closed:
            return  # we closed it
        why = f": {exc}" if exc else ""
        self.fail(
            SidecarUnavailableError, f"the connection to {self.client.socket_path} was lost{why}"
        )
        if self.client._on_lost is not None:
            self.client._on_lost()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def writable(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Waits (up to ``deadline``) while the peer is not reading fast enough."""
        while self.paused and not self.closed:
            if self._writable is None:
                self._writable = loop.create_future()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SidecarTimeoutError(f"{self.client.socket_path} is not reading its requests")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._writable), remaining)

    def fail(self, cls: type[SidecarError], message: str) -> None:
        """Drops the connection: each caller waiting on it gets its own ``cls(message)``."""
        if self.closed:
            return
        self.closed = True
        self.client._forget(self)
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(cls(message))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self.transport.abort()


class PySidecarClient:
    """An asyncio client of one sidecar worker socket (see ``docs/sidecar.md``).

    Binds to the running event loop on first use. Requests are pipelined over up to
    ``connections`` connections (the one with the fewest in flight); at most ``max_in_flight``
    are in flight, more wait for a slot within their timeout.
    """

    backend = "python"

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        connections: int = 2,
        max_in_flight: int = 1024,
        connect_timeout: float | None = None,
    ) -> None:
        self.socket_path = check_socket_path(socket_path)
        self.timeout = check_positive(timeout, "timeout")
        self.max_frame = check_max_frame(max_frame)
        self.connections = _check_count(connections, "connections")
        self.max_in_flight = _check_count(max_in_flight, "max_in_flight")
        self.connect_timeout = (
            None if connect_timeout is None else check_positive(connect_timeout, "connect_timeout")
        )
        #: Answers dropped because their caller had stopped waiting (timeout, cancellation).
        self.late_answers = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = _Slots(self.max_in_flight)
        self._conns: list[_Conn] = []
        self._connect_task: asyncio.Task[_Conn] | None = None
        self._next_id = 1
        self._closed = False
        self._close_message = f"the client of {self.socket_path} is closed"
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        #: Called when the peer drops a connection (the supervisor: the worker may be dying).
        self._on_lost: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"SidecarClient({self.socket_path!r}, timeout={self.timeout:g}, backend='python')"

    # --- the API --------------------------------------------------------------------------------

    async def request(
        self, method: str, params: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Calls ``method(params)`` on the worker and returns its result.

        ``TypeError``/``ValueError`` for bad input (nothing is sent); ``SidecarTimeoutError``,
        ``SidecarUnavailableError``, ``SidecarProtocolError``, ``SidecarRemoteError`` otherwise.
        """
        prepared = prepare_request(method, params)
        seconds = self.timeout if timeout is None else check_positive(timeout, "timeout")
        return await self._call(prepared, seconds)

    def close(self) -> None:
        """Drops every connection; callers still waiting get ``SidecarUnavailableError``."""
        self._abort(self._close_message, closing=True)

    async def aclose(self) -> None:
        """:meth:`close`, then waits until the sockets are closed."""
        conns = list(self._conns)
        task = self._connect_task
        self.close()
        if task is not None:
            await asyncio.wait([task], timeout=5.0)  # its outcome is retrieved by _connect_done
        lost = [c.lost for c in conns if not c.lost.done()]
        if lost:
            await asyncio.wait(lost, timeout=1.0)

    async def __aenter__(self) -> PySidecarClient:
        self._bind()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        """Connections open, requests in flight, late answers dropped."""
        return {
            "connections": len(self._conns),
            "in_flight": sum(len(c.pending) for c in self._conns),
            "late_answers": self.late_answers,
            "closed": self._closed,
        }

    # --- internals ------------------------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("this SidecarClient is bound to another event loop")
        return loop

    def _abort(self, message: str, *, closing: bool = False) -> None:
        """Fails every caller with ``SidecarUnavailableError(message)``; ``closing`` also refuses
        new requests."""
        if closing:
            if self._closed:
                return
            self._closed = True
            self._close_message = message
            # A connect in progress finishes by itself (a Unix connect is immediate or bounded by
            # connect_timeout) and then sees the client closed.
        for conn in list(self._conns):
            conn.fail(SidecarUnavailableError, message)

    def _reset_backoff(self) -> None:
        self._failures = 0
        self._retry_at = 0.0

    def _forget(self, conn: _Conn) -> None:
        with contextlib.suppress(ValueError):
            self._conns.remove(conn)

    async def _call(
        self,
        prepared: PreparedRequest,
        timeout: float,
        *,
        bounded: bool = True,
        metered: bool = True,
        unsent_ok: bool = False,
    ) -> Any:
        """The request/response exchange. ``metered=False``: the caller counts it (or it is a
        ping). ``unsent_ok``: when no connection could take the request (nothing was sent),
        return ``UNSENT`` instead of raising ``SidecarUnavailableError``."""
        loop = self._bind()
        if self._closed:
            if unsent_ok:
                return UNSENT
            raise SidecarUnavailableError(self._close_message)
        req_id = self._next_id
        frame = prepared.frame(req_id, self.max_frame)  # ValueError: nothing sent, no id used
        self._next_id = req_id + 1
        args = (loop, req_id, frame, prepared.method, timeout, bounded, unsent_ok)
        if not metered:
            return await self._exchange(*args)
        counters = _counters()
        counters.requests += 1
        counters.in_flight += 1
        started = time.perf_counter()
        try:
            return await self._exchange(*args)
        except SidecarError as exc:
            counters.error(exc)
            raise
        finally:
            counters.in_flight -= 1
            counters.observe(time.perf_counter() - started)

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        req_id: int,
        frame: bytes,
        method: str,
        timeout: float,
        bounded: bool,
        unsent_ok: bool,
    ) -> Any:
        deadline = loop.time() + timeout
        slots = self._slots
        if bounded and not await slots.acquire(loop, deadline):
            raise SidecarTimeoutError(
                f"no free slot ({self.max_in_flight} requests in flight) within {timeout:g} s"
            )
        try:
            try:
                while True:
                    conn = self._pick()
                    if conn is None:
                        conn = await self._connect(loop, deadline, timeout)
                    if conn.paused:
                        await conn.writable(loop, deadline)
                    if not conn.closed:
                        break
                    if self._closed:
                        raise SidecarUnavailableError(self._close_message)
            except SidecarUnavailableError:
                if unsent_ok:
                    return UNSENT
                raise
            assert conn.transport is not None
            fut: asyncio.Future[Any] = loop.create_future()
            conn.pending[req_id] = fut
            conn.transport.write(frame)
            handle = loop.call_at(deadline, _expire, fut, method, timeout)
            try:
                return await fut
            finally:
                handle.cancel()
                # A late answer for this id is now dropped (see _Conn._deliver).
                conn.pending.pop(req_id, None)
        finally:
            if bounded:
                slots.release()

    def _pick(self) -> _Conn | None:
        """The open connection with the fewest in flight; opens another in the background when
        all are busy and the pool has room."""
        conns = self._conns
        if not conns:
            return None
        best = conns[0] if len(conns) == 1 else min(conns, key=lambda c: len(c.pending))
        if best.transport is not None and best.transport.is_closing():
            best.dropped()  # a write just failed; connection_lost is on its way
            return self._pick()
        if (
            best.pending
            and len(conns) < self.connections
            and self._connect_task is None
            and self._loop is not None
            and self._loop.time() >= self._retry_at
        ):
            self._start_connect()
        return best

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, deadline: float, timeout: float
    ) -> _Conn:
        """A new connection (or the one being opened); one connect at a time per client."""
        task = self._connect_task
        if task is None:
            now = loop.time()
            if now < self._retry_at:
                raise SidecarUnavailableError(
                    f"cannot connect to {self.socket_path}: {self._last_error} (next attempt in "
                    f"{self._retry_at - now:.3f} s)"
                )
            task = self._start_connect()
        try:
            return await asyncio.wait_for(asyncio.shield(task), deadline - loop.time())
        except asyncio.TimeoutError:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception() from None  # type: ignore[misc]
            raise SidecarTimeoutError(
                f"could not connect to {self.socket_path} within {timeout:g} s"
            ) from None

    def _start_connect(self) -> asyncio.Task[_Conn]:
        assert self._loop is not None
        task = self._loop.create_task(self._open())
        self._connect_task = task
        task.add_done_callback(self._connect_done)
        return task

    def _connect_done(self, task: asyncio.Task[_Conn]) -> None:
        if self._connect_task is task:
            self._connect_task = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers that waited got it

    async def _open(self) -> _Conn:
        loop = self._loop
        assert loop is not None
        limit = self.connect_timeout or self.timeout
        try:
            _, conn = await asyncio.wait_for(
                loop.create_unix_connection(lambda: _Conn(self, loop), self.socket_path), limit
            )
        except (OSError, asyncio.TimeoutError) as exc:  # refused, no such file, timed out
            self._failures += 1
            low, high = CONNECT_BACKOFF
            self._retry_at = loop.time() + min(high, low * 2 ** (self._failures - 1))
            if isinstance(exc, OSError) and exc.strerror:
                why = exc.strerror
            elif isinstance(exc, asyncio.TimeoutError):
                why = f"no connection within {limit:g} s"
            else:
                why = str(exc) or type(exc).__name__
            self._last_error = why
            raise SidecarUnavailableError(f"cannot connect to {self.socket_path}: {why}") from None
        self._reset_backoff()
        if self._closed:
            conn.fail(SidecarUnavailableError, self._close_message)
            await asyncio.wait([conn.lost], timeout=1.0)
            raise SidecarUnavailableError(self._close_message)
        self._conns.append(conn)
        return conn


# --- the supervisor -----------------------------------------------------------------------------

_PING = prepare_request(PING, None)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _import_path() -> list[str]:
    """This process's ``sys.path`` without the standard library, as absolute paths: what a
    worker needs on PYTHONPATH to import ``sark_native`` and the app the way we do."""
    stdlib = [
        os.path.abspath(p)
        for p in {sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")}
        if p
    ]
    out: list[str] = []
    for entry in sys.path:
        path = os.path.abspath(entry or os.getcwd())
        if any(path == s or path.startswith(s + os.sep) for s in stdlib):
            continue
        if path.endswith(".zip") and os.path.dirname(path) == os.path.join(sys.base_prefix, "lib"):
            continue  # pythonXY.zip
        if path not in out:
            out.append(path)
    return out


_prctl: Callable[..., int] | None = None


def _child_setup(parent: int) -> Callable[[], None] | None:
    """The ``preexec_fn`` of a worker on Linux: SIGTERM when this process dies
    (``PR_SET_PDEATHSIG``), and exit at once if it already has. ``None`` elsewhere."""
    global _prctl
    if not sys.platform.startswith("linux"):
        return None
    if _prctl is None:
        import ctypes

        # Resolved here, in the parent: the child only calls it (no dlopen after fork).
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl = _prctl
    sigterm = int(signal.SIGTERM)

    def setup() -> None:
        prctl(1, sigterm, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return setup


class _PopenHandle:
    """A ``subprocess.Popen`` with the interface of the native ``SidecarProcess``."""

    __slots__ = ("pid", "popen")

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, sig: int) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                self.popen.send_signal(sig)

    def close_stdin(self) -> None:
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


class _Proc:
    """One worker process (an incarnation of a slot)."""

    def __init__(self, handle: Any, client: Any) -> None:
        #: ``_PopenHandle`` (Python path) or the native ``SidecarProcess``.
        self.handle = handle
        self.pid: int = handle.pid
        self.client = client
        self.exited = asyncio.Event()
        #: Set on exit or suspicion: wakes the supervising task before its next ping.
        self.wake = asyncio.Event()
        #: The connection broke or refused a request: not live until a ping says otherwise.
        self.suspect = False
        self.returncode: int | None = None
        self.exit_time: float | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL)
        self.ready_at: float | None = None

    def tail(self, lines: int = 20) -> str:
        text = "\n".join(list(self.output)[-lines:])
        return text[-4000:] if text else "(no output)"

    def close_stdin(self) -> None:
        self.handle.close_stdin()

    def signal(self, sig: int) -> None:
        self.handle.send_signal(sig)


class _Slot:
    """Worker number ``index``: its socket path and current process."""

    def __init__(self, index: int, path: str) -> None:
        self.index = index
        self.path = path
        self.proc: _Proc | None = None
        self.live = False
        self.in_flight = 0
        self.restarts = 0
        #: Consecutive deaths of a worker that had not been ready for STABLE_AFTER.
        self.failures = 0
        #: Whether the last worker died that way.
        self.quick_death = False
        self.last_exit: str | None = None
        self.task: asyncio.Task[None] | None = None


#: Every started, unclosed PySidecar: stopped by the atexit handler if nobody closed it.
_open_sidecars: weakref.WeakSet[PySidecar] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for sidecar in list(_open_sidecars):
        with contextlib.suppress(Exception):
            sidecar.close()


atexit.register(_close_all_at_exit)


class PySidecar:
    """Spawns and supervises ``workers`` processes serving ``app`` (``"pkg.module:attr"``).

    An async context manager (or :meth:`start` / :meth:`aclose`). Each worker has its own socket
    in a private 0700 directory and its own :class:`PySidecarClient`; :meth:`request` goes to the
    live worker with the fewest requests in flight. See ``docs/sidecar.md``.
    """

    backend = "python"

    def __init__(
        self,
        app: str,
        *,
        workers: int = 1,
        timeout: float = 5.0,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
        ping_interval: float = 0.5,
        ping_timeout: float = 2.0,
        hang_timeout: float = 30.0,
        grace_period: float = 5.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        connections: int = 1,
        max_in_flight: int = 1024,
        backend: str = "python",
    ) -> None:
        if backend not in ("python", "rust"):
            raise ValueError(f"backend must be 'python' or 'rust', not {backend!r}")
        #: The extension when the workers are spawned natively and served by native clients.
        self._native: Any = None
        self._meter: Any = _PyMeter()
        if backend == "rust":
            from .. import _backend

            self._native = _backend.native()
            self._meter = _NativeMeter(self._native)
        self.backend = backend
        if not isinstance(app, str):
            raise TypeError(f"app must be a 'module:attr' str, not {type(app).__name__}")
        module, sep, attr = app.partition(":")
        if not sep or not module or not attr or any(c.isspace() for c in app):
            raise ValueError(f"app must be 'module:attr', got {app!r}")
        self.app = app
        self.workers = _check_count(workers, "workers")
        self.timeout = check_positive(timeout, "timeout")
        if not isinstance(python, str) or not python:
            raise TypeError("python must be the path of a Python interpreter (str)")
        self.python = python
        if env is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise TypeError("env must map str to str")
        self.env = dict(env) if env is not None else None
        self.cwd = None if cwd is None else os.fspath(cwd)
        self.start_timeout = check_positive(start_timeout, "start_timeout")
        self.ping_interval = check_positive(ping_interval, "ping_interval")
        self.ping_timeout = check_positive(ping_timeout, "ping_timeout")
        self.hang_timeout = check_positive(hang_timeout, "hang_timeout")
        self.grace_period = check_positive(grace_period, "grace_period")
        self.max_frame = check_max_frame(max_frame)
        self.connections = _check_count(connections, "connections")
        self.max_in_flight = _check_count(max_in_flight, "max_in_flight")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: list[_Slot] = []
        self._dir: str | None = None
        self._restarts = 0
        self._rr = 0
        self._started = False
        self._closing = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self._any_live: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"Sidecar({self.app!r}, workers={self.workers}, backend={self.backend!r})"

    # --- introspection --------------------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        """Pids of the worker processes that are running now."""
        return [
            s.proc.pid
            for s in self._slots
            if s.proc is not None and s.proc.returncode is None and s.proc.handle.poll() is None
        ]

    @property
    def restarts(self) -> int:
        """Workers started after the first ones (after an exit, a failed ping or a hang)."""
        return self._restarts

    @property
    def socket_dir(self) -> str | None:
        """The private directory (0700) holding the workers' sockets, while running."""
        return self._dir

    def stats(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "live": sum(1 for s in self._slots if s.live),
            "restarts": self._restarts,
            "in_flight": sum(s.in_flight for s in self._slots),
            "pids": self.pids,
            "socket_dir": self._dir,
            "per_worker": [
                {
                    "index": s.index,
                    "pid": s.proc.pid if s.proc is not None else None,
                    "live": s.live,
                    "in_flight": s.in_flight,
                    "restarts": s.restarts,
                    "last_exit": s.last_exit,
                }
                for s in self._slots
            ],
        }

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> PySidecar:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._any_live = asyncio.Event()
        elif self._loop is not loop:
            raise RuntimeError("this Sidecar is bound to another event loop")
        return loop

    async def start(self) -> None:
        """Spawns the workers and returns once each answers a ping (within ``start_timeout``);
        ``SidecarUnavailableError`` with the worker's output when one does not."""
        loop = self._bind()
        if self._closed:
            raise RuntimeError("this Sidecar is closed")
        if self._started:
            return
        self._started = True
        self._dir = tempfile.mkdtemp(prefix="sark-sidecar-")  # mode 0700
        self._slots = [_Slot(i, os.path.join(self._dir, f"w{i}.sock")) for i in range(self.workers)]
        try:
            check_socket_path(self._slots[-1].path)
        except ValueError:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._closed = True
            raise
        _open_sidecars.add(self)
        try:
            for slot in self._slots:
                self._spawn(slot)
            waits = [loop.create_task(self._wait_ready(s)) for s in self._slots]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in waits:
                    task.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            for task in waits:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        except BaseException:
            await self.aclose()
            raise
        for slot in self._slots:
            self._set_live(slot, True)
            slot.task = loop.create_task(self._supervise(slot))

    async def aclose(self) -> None:
        """Stops the workers: SIGTERM (in-flight requests finish), SIGKILL after the grace
        period, reaps them and removes the socket directory. Idempotent."""
        if self._close_task is None:
            if self._closed and not self._slots:
                return
            self._close_task = asyncio.get_running_loop().create_task(self._aclose())
        await asyncio.shield(self._close_task)

    async def _aclose(self) -> None:
        self._closing = self._closed = True
        _open_sidecars.discard(self)
        for slot in self._slots:
            self._set_live(slot, False)
        tasks = [s.task for s in self._slots if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        procs = [s.proc for s in self._slots if s.proc is not None]
        running = [p for p in procs if not p.exited.is_set()]
        for proc in running:
            proc.signal(signal.SIGTERM)
            proc.close_stdin()
        await self._wait_exits(running, self.grace_period + KILL_MARGIN)
        stubborn = [p for p in running if not p.exited.is_set()]
        for proc in stubborn:
            logger.warning(
                "sidecar worker (pid %d) still running %.1f s after SIGTERM; killing it",
                proc.pid,
                self.grace_period + KILL_MARGIN,
            )
            proc.signal(signal.SIGKILL)
        await self._wait_exits(stubborn, KILL_WAIT)
        for proc in procs:
            proc.close_stdin()
            await proc.client.aclose()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._slots = []

    @staticmethod
    async def _wait_exits(procs: list[_Proc], timeout: float) -> None:
        if not procs:
            return
        waits = [asyncio.ensure_future(p.exited.wait()) for p in procs]
        try:
            await asyncio.wait(waits, timeout=timeout)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def close(self) -> None:
        """Blocking stop (also the ``atexit`` path): SIGTERM, wait the grace period, SIGKILL,
        reap, remove the directory. Prefer :meth:`aclose` on a running loop."""
        if self._closed and not self._slots:
            return
        self._closing = self._closed = True
        _open_sidecars.discard(self)
        procs = [s.proc for s in self._slots if s.proc is not None]
        for proc in procs:
            proc.signal(signal.SIGTERM)
            proc.close_stdin()
        deadline = time.monotonic() + self.grace_period + KILL_MARGIN
        for proc in procs:
            if proc.handle.wait(max(0.0, deadline - time.monotonic())) is None:
                proc.signal(signal.SIGKILL)
                proc.handle.wait(KILL_WAIT)
        loop = self._loop
        for slot in self._slots:
            slot.live = False
            if slot.task is not None and loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    slot.task.cancel()
        for proc in procs:
            proc.client.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._slots = []

    # --- requests -------------------------------------------------------------------------------

    async def request(
        self, method: str, params: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Calls ``method(params)`` on the live worker with the fewest requests in flight.

        With no live worker it waits for one within the timeout, then raises
        ``SidecarUnavailableError``; otherwise as :meth:`PySidecarClient.request`. A request that
        no connection of the chosen worker could take (the worker just died, and nothing was
        sent) goes to another live worker, or waits for a restarted one.
        """
        native = self._native is not None
        # The native client validates while it encodes; the Python path validates here (and so
        # does the native path when the request has to wait for a live worker first).
        prepared = _PING if native else prepare_request(method, params)
        seconds = self.timeout if timeout is None else check_positive(timeout, "timeout")
        loop = self._bind()
        if not self._started:
            raise RuntimeError("start the Sidecar first (await sidecar.start() or async with)")
        deadline = loop.time() + seconds
        meter = self._meter
        meter.start()
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            while True:
                slot = self._pick()
                if slot is None:
                    if native:
                        prepare_request(method, params)
                    slot = await self._wait_live(loop, deadline, seconds)
                proc = slot.proc
                assert proc is not None
                slot.in_flight += 1
                try:
                    remaining = max(deadline - loop.time(), 1e-3)
                    result = await self._call(
                        proc, method, params, prepared, remaining, unsent_ok=True
                    )
                finally:
                    slot.in_flight -= 1
                if result is not UNSENT:
                    return result
                self._suspect(slot, proc)
                if slot.live and slot.proc is proc:  # not taken out of rotation: do not spin
                    raise SidecarUnavailableError(
                        f"sidecar worker {slot.index} (pid {proc.pid}) cannot take requests"
                    )
        except BaseException as exc:
            failure = exc
            raise
        finally:
            meter.finish(time.perf_counter() - started, failure)

    def _pick(self) -> _Slot | None:
        slots = self._slots
        n = len(slots)
        if n == 0:
            return None
        start = self._rr
        self._rr = (start + 1) % n
        best: _Slot | None = None
        for k in range(n):
            slot = slots[(start + k) % n]
            if slot.live and (best is None or slot.in_flight < best.in_flight):
                best = slot
        return best

    async def _wait_live(
        self, loop: asyncio.AbstractEventLoop, deadline: float, timeout: float
    ) -> _Slot:
        event = self._any_live
        assert event is not None
        while True:
            slot = self._pick()
            if slot is not None:
                return slot
            remaining = deadline - loop.time()
            if self._closing or remaining <= 0:
                if self._closing:
                    raise SidecarUnavailableError(f"the sidecar {self.app!r} is closed")
                last = "; ".join(
                    f"worker {s.index} {s.last_exit}" for s in self._slots if s.last_exit
                )
                raise SidecarUnavailableError(
                    f"no live worker of {self.app!r} within {timeout:g} s"
                    + (f" ({last})" if last else "")
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    def _set_live(self, slot: _Slot, live: bool) -> None:
        slot.live = live
        event = self._any_live
        if event is None:
            return
        if any(s.live for s in self._slots):
            event.set()
        else:
            event.clear()

    # --- workers --------------------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        given = None
        if self.env is not None:
            env.update(self.env)
            given = self.env.get("PYTHONPATH")
        parts = [p for p in (given or "").split(os.pathsep) if p]
        parts += [p for p in _import_path() if p not in parts]
        env["PYTHONPATH"] = os.pathsep.join(parts)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env[PARENT_ENV] = str(os.getpid())
        return env

    def _spawn(self, slot: _Slot) -> _Proc:
        """Starts a worker for ``slot`` (stdin a pipe, output captured): natively on the Rust
        path (``core::ipc::process``: spawned from one long-lived thread, reaped by another),
        with ``subprocess`` on the Python path."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(slot.path)  # a socket left by a killed worker
        cmd = [
            self.python,
            "-m",
            "sark_native.sidecar",
            self.app,
            "--socket",
            slot.path,
            "--max-frame",
            str(self.max_frame),
            "--grace-period",
            repr(self.grace_period),
            "--watch-stdin",
        ]
        options: dict[str, Any] = {
            "timeout": self.timeout,
            "max_frame": self.max_frame,
            "connections": self.connections,
            "max_in_flight": self.max_in_flight,
        }
        loop = self._loop
        assert loop is not None
        if self._native is not None:
            native = self._native
            box: list[_Proc] = []

            def on_line(line: str) -> None:
                if box:
                    box[0].output.append(line)
                    logger.info("sidecar worker %d (pid %d): %s", slot.index, box[0].pid, line)

            def on_exit(code: int) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed (interpreter exit)
                    loop.call_soon_threadsafe(self._on_exit, slot, box[0], code)

            try:
                handle = native._spawn_sidecar_worker(
                    cmd[0], cmd[1:], list(self._child_env().items()), self.cwd, on_line, on_exit
                )
            except SidecarUnavailableError:
                raise
            client: Any = native.SidecarClient(slot.path, **options)
            proc = _Proc(handle, client)
            box.append(proc)
            client._set_on_lost(lambda: self._suspect(slot, proc))
            slot.proc = proc
            return proc
        read_fd, write_fd = os.pipe()
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=write_fd,
                stderr=write_fd,
                env=self._child_env(),
                cwd=self.cwd,
                start_new_session=True,  # a Ctrl-C in the terminal is the gateway's to handle
                preexec_fn=_child_setup(os.getpid()),
            )
        except OSError as exc:
            os.close(read_fd)
            raise SidecarUnavailableError(f"cannot start a worker ({cmd[0]}): {exc}") from exc
        finally:
            os.close(write_fd)
        py_client = PySidecarClient(slot.path, **options)
        proc = _Proc(_PopenHandle(popen), py_client)
        py_client._on_lost = lambda: self._suspect(slot, proc)
        slot.proc = proc
        threading.Thread(
            target=_read_output,
            args=(read_fd, proc, slot.index),
            name=f"sark-sidecar-output-{popen.pid}",
            daemon=True,
        ).start()
        threading.Thread(
            target=self._wait_exit,
            args=(loop, slot, proc),
            name=f"sark-sidecar-wait-{popen.pid}",
            daemon=True,
        ).start()
        return proc

    def _wait_exit(self, loop: asyncio.AbstractEventLoop, slot: _Slot, proc: _Proc) -> None:
        """On a thread: reaps the worker, then tells the loop at once."""
        code = proc.handle.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed (interpreter exit)
            loop.call_soon_threadsafe(self._on_exit, slot, proc, code)

    def _call(
        self,
        proc: _Proc,
        method: str,
        params: Any,
        prepared: PreparedRequest,
        timeout: float,
        *,
        bounded: bool = True,
        unsent_ok: bool = False,
    ) -> Any:
        """The worker client's request, unmetered (the supervisor counts its own), on either
        client: an awaitable."""
        if self._native is not None:
            return proc.client._call(
                method,
                params,
                timeout,
                bounded=bounded,
                metered=False,
                unsent=UNSENT if unsent_ok else None,
            )
        return proc.client._call(
            prepared, timeout, bounded=bounded, metered=False, unsent_ok=unsent_ok
        )

    def _on_exit(self, slot: _Slot, proc: _Proc, code: int) -> None:
        proc.returncode = code
        if self._loop is not None:
            proc.exit_time = self._loop.time()
        how = _describe_exit(code)
        if slot.proc is proc:
            slot.last_exit = how
            self._set_live(slot, False)
        if not self._closing:
            logger.warning(
                "sidecar worker %d (pid %d) %s; output:\n%s", slot.index, proc.pid, how, proc.tail()
            )
        # Its callers fail now, not when their timeouts run out.
        proc.client._abort(f"sidecar worker {slot.index} (pid {proc.pid}) {how}")
        proc.exited.set()
        proc.wake.set()

    def _suspect(self, slot: _Slot, proc: _Proc) -> None:
        """The worker dropped a connection, or no connection to it could take a request: out
        of rotation until its supervising task has seen it exit, or answer a ping."""
        if slot.proc is proc and proc.ready_at is not None and not proc.exited.is_set():
            proc.suspect = True
            self._set_live(slot, False)
            proc.wake.set()

    async def _wait_ready(self, slot: _Slot) -> None:
        """Returns once the slot's worker answers a ping; ``SidecarUnavailableError`` with its
        output when it exits first or ``start_timeout`` runs out (it is then killed)."""
        proc = slot.proc
        assert proc is not None
        assert self._loop is not None
        loop = self._loop
        deadline = loop.time() + self.start_timeout
        while True:
            if proc.exited.is_set():
                raise SidecarUnavailableError(
                    f"sidecar worker {slot.index} ({self.app}) {_describe_exit(proc.returncode)} "
                    f"before answering a ping; its output:\n{proc.tail()}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                proc.signal(signal.SIGKILL)
                raise SidecarUnavailableError(
                    f"sidecar worker {slot.index} ({self.app}) did not answer a ping within "
                    f"{self.start_timeout:g} s; its output:\n{proc.tail()}"
                )
            if os.path.exists(slot.path):  # noqa: ASYNC240 - one stat of a local socket file
                try:
                    await self._call(
                        proc, PING, None, _PING, min(self.ping_timeout, remaining), bounded=False
                    )
                except SidecarError:
                    proc.client._reset_backoff()
                else:
                    proc.ready_at = loop.time()
                    return
            await asyncio.sleep(0.005)

    async def _supervise(self, slot: _Slot) -> None:
        """Watches the slot's worker; restarts it when it exits, stops answering or hangs."""
        try:
            while not self._closing:
                proc = slot.proc
                assert proc is not None
                reason = await self._watch(slot, proc)
                if reason is not None:
                    logger.warning(
                        "sidecar worker %d (pid %d): %s; killing it", slot.index, proc.pid, reason
                    )
                    self._set_live(slot, False)
                    proc.signal(signal.SIGKILL)
                    proc.client._abort(
                        f"sidecar worker {slot.index} (pid {proc.pid}) was killed: {reason}"
                    )
                await self._retire(slot, proc)
                if self._closing:
                    return
                await self._restart(slot)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the supervisor of sidecar worker %d failed", slot.index)

    async def _watch(self, slot: _Slot, proc: _Proc) -> str | None:
        """``None`` once the worker exited, or why it must be killed."""
        while True:
            if not proc.suspect:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wake.wait(), self.ping_interval)
                proc.wake.clear()
            if proc.exited.is_set():
                return None
            if proc.suspect:
                # Usually the process just died and its exit is on its way.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.exited.wait(), 0.5)
                    return None
            try:
                info = await self._call(proc, PING, None, _PING, self.ping_timeout, bounded=False)
            except SidecarTimeoutError:
                return f"no answer to a ping within {self.ping_timeout:g} s"
            except SidecarError as exc:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.exited.wait(), 0.5)
                    return None
                return f"its ping failed: {exc}"
            if proc.suspect and not self._closing:
                proc.suspect = False
                self._set_live(slot, True)
            age = info.get("oldest_age") if isinstance(info, dict) else None
            if isinstance(age, (int, float)) and age > self.hang_timeout:
                return (
                    f"its oldest request has run for {age:.1f} s "
                    f"(hang_timeout {self.hang_timeout:g} s)"
                )

    async def _retire(self, slot: _Slot, proc: _Proc) -> None:
        """Waits for the exit (bounded), closes the client and stdin, updates the backoff."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.exited.wait(), KILL_WAIT)
        if not proc.exited.is_set():
            logger.error("sidecar worker %d (pid %d) does not exit", slot.index, proc.pid)
        proc.close_stdin()
        await proc.client.aclose()
        loop = self._loop
        assert loop is not None
        died = proc.exit_time if proc.exit_time is not None else loop.time()
        # It kept dying: it never answered a ping, or died soon after its first one.
        slot.quick_death = proc.ready_at is None or died - proc.ready_at < STABLE_AFTER
        if not slot.quick_death:
            slot.failures = 0

    def _restart_delay(self, slot: _Slot) -> float:
        if slot.failures == 0:
            return 0.0
        low, high = RESTART_BACKOFF
        return float(min(high, low * 2 ** (slot.failures - 1)))

    async def _restart(self, slot: _Slot) -> None:
        """Starts a new worker for the slot, with backoff while it keeps dying."""
        while not self._closing:
            delay = self._restart_delay(slot)  # 0 unless the previous ones died quickly too
            if slot.quick_death:
                slot.failures += 1
            prev = slot.proc
            if delay:
                await asyncio.sleep(delay)
            if self._closing:
                return
            self._restarts += 1
            slot.restarts += 1
            self._meter.restart()
            try:
                self._spawn(slot)
                await self._wait_ready(slot)
            except SidecarUnavailableError as exc:
                logger.warning("sidecar worker %d did not restart: %s", slot.index, exc)
                proc = slot.proc
                if proc is not None and proc is not prev:
                    proc.signal(signal.SIGKILL)
                    await self._retire(slot, proc)
                continue
            self._set_live(slot, True)
            logger.info("sidecar worker %d restarted", slot.index)
            return


def _read_output(fd: int, proc: _Proc, index: int) -> None:
    """On a thread: keeps the tail of a worker's stdout/stderr and logs each line."""
    with open(fd, "rb") as stream:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            proc.output.append(line)
            logger.info("sidecar worker %d (pid %d): %s", index, proc.pid, line)
