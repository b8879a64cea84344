"""The sidecar worker: serves a handler's methods on a Unix socket with asyncio.

:func:`serve` / :func:`serve_async` are the API, ``python -m sark_native.sidecar`` the CLI
(``__main__.py``). One process is one worker; the supervisors (``Sidecar``) start several. The
rules (methods, errors, ping, malformed frames, shutdown) are in ``docs/sidecar.md``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import importlib
import inspect
import itertools
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..exceptions import SidecarProtocolError
from ._protocol import (
    DEFAULT_MAX_FRAME,
    METHOD_NOT_FOUND,
    PING,
    FrameReader,
    check_max_frame,
    check_positive,
    check_socket_path,
    decode_frame,
    encode_error,
    encode_result,
    parse_request,
)

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_GRACE_PERIOD",
    "PARENT_ENV",
    "Worker",
    "default_threads",
    "handler_methods",
    "load_app",
    "serve",
    "serve_async",
]

logger = logging.getLogger("sark_native.sidecar")

DEFAULT_BACKLOG = 1024
#: How long in-flight requests may run after SIGTERM before they are cancelled.
DEFAULT_GRACE_PERIOD = 10.0
#: Set by a supervisor to its own pid: a worker started with ``--watch-stdin`` whose parent is
#: already someone else exits at once (the parent died before PR_SET_PDEATHSIG took effect).
PARENT_ENV = "SARK_NATIVE_SIDECAR_PARENT"
#: Bound on flushing responses to the connections while shutting down.
FLUSH_TIMEOUT = 2.0


class _Method(NamedTuple):
    fn: Callable[[Any], Any]
    is_async: bool


def _is_async(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with `async def __call__`
    return inspect.ismethod(call) and inspect.iscoroutinefunction(call)


def handler_methods(handler: object) -> dict[str, _Method]:
    """The callable methods of ``handler``: the entries of a dict (or other Mapping), else the
    public (not ``_``-prefixed) callable attributes that are not classes."""
    if inspect.isclass(handler):
        raise TypeError(
            f"handler {handler.__name__} is a class: pass an instance (the CLI's module:attr "
            "instantiates classes)"
        )
    methods: dict[str, _Method] = {}
    if isinstance(handler, Mapping):
        for name, fn in handler.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"handler dict keys must be non-empty str, got {name!r}")
            if not callable(fn):
                raise TypeError(f"handler[{name!r}] is not callable")
            methods[name] = _Method(fn, _is_async(fn))
    else:
        for name in dir(handler):
            if name.startswith("_"):
                continue
            try:
                fn = getattr(handler, name)
            except AttributeError:
                continue
            if callable(fn) and not inspect.isclass(fn):
                methods[name] = _Method(fn, _is_async(fn))
    if PING in methods:
        raise ValueError(f"{PING!r} is reserved for the worker's health answer")
    if not methods:
        raise ValueError(f"handler {handler!r} has no public callable methods")
    return methods


def load_app(spec: str) -> Any:
    """The handler named by ``module:attr`` (``attr`` may be dotted).

    A class is instantiated with no arguments; a function (or ``functools.partial``) is a
    factory, called with no arguments (it may return an awaitable, which ``serve`` awaits);
    anything else (an instance, a module, a dict) is the handler itself.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"app must be 'module:attr', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}") from None
    if inspect.isclass(obj):
        return obj()
    if inspect.isfunction(obj) or inspect.ismethod(obj) or isinstance(obj, functools.partial):
        return obj()
    return obj


def default_threads() -> int:
    """Threads for sync handler methods: min(32, cpu + 4), as ThreadPoolExecutor's default."""
    return min(32, (os.cpu_count() or 1) + 4)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


class _Connection(asyncio.Protocol):
    """One client connection: frames in, requests dispatched, responses written as they finish."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.reader = FrameReader(worker.max_frame)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.eof = False
        #: Requests of this connection still running.
        self.pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.worker.conns.add(self)

    def data_received(self, data: bytes) -> None:
        worker = self.worker
        if self.closed or worker.stopping:
            return
        try:
            for body in self.reader.feed(data):
                if self.closed or worker.stopping:
                    return
                worker.dispatch(self, parse_request(decode_frame(body)))
        except SidecarProtocolError as exc:
            logger.warning("closing a connection that broke the protocol: %s", exc)
            self.close()

    def eof_received(self) -> bool:
        # The client closed its side: answer what is running, then close.
        self.eof = True
        return self.pending > 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.worker.conns.discard(self)
        self.worker.connection_gone()

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it catches up,
        # so a worker never buffers without bound.
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed and not self.worker.stopping:
            self.transport.resume_reading()

    def send(self, frame: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(frame)

    def request_done(self) -> None:
        self.pending -= 1
        if self.eof and self.pending == 0:
            self.close()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def close(self) -> None:
        """Closes after flushing what was written; later responses are dropped."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()


class _StdinWatcher(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.stop("stdin closed (the supervisor is gone)")


class Worker:
    """Serves ``methods`` on ``socket_path`` until :meth:`stop` (SIGTERM, SIGINT, stdin EOF)."""

    def __init__(
        self,
        handler: object,
        socket_path: str,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        backlog: int = DEFAULT_BACKLOG,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        threads: int | None = None,
    ) -> None:
        self.methods = handler_methods(handler)
        self.path = check_socket_path(socket_path)
        self.max_frame = check_max_frame(max_frame)
        if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
            raise ValueError(f"backlog must be an int >= 1, got {backlog!r}")
        self.backlog = backlog
        self.grace_period = check_positive(grace_period, "grace_period")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
            raise TypeError("threads must be an int or None")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads or default_threads()
        self.pid = os.getpid()
        self.stopping = False
        #: Set once a grace period ran out and the remaining requests were cancelled.
        self.cancelled = False
        self.conns: set[_Connection] = set()
        #: In-flight requests: token -> start time (monotonic), oldest first.
        self.inflight: dict[int, float] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._tokens = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_reason = ""
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._no_conns: asyncio.Event | None = None

    def connection_gone(self) -> None:
        if not self.conns and self._no_conns is not None:
            self._no_conns.set()

    # --- requests -------------------------------------------------------------------------------

    def ping_info(self) -> dict[str, Any]:
        n = len(self.inflight)
        oldest = time.monotonic() - next(iter(self.inflight.values())) if n else 0.0
        return {"pid": self.pid, "in_flight": n, "oldest_age": oldest}

    def dispatch(self, conn: _Connection, request: Any) -> None:
        req_id, name, params = request
        if name == PING:
            conn.send(encode_result(req_id, self.ping_info(), self.max_frame))
            return
        method = self.methods.get(name)
        if method is None:
            message = f"no method {name!r}"
            conn.send(encode_error(req_id, METHOD_NOT_FOUND, message, self.max_frame))
            return
        assert self._loop is not None
        token = next(self._tokens)
        self.inflight[token] = time.monotonic()
        conn.pending += 1
        task = self._loop.create_task(self._run(conn, req_id, method, params, token))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(
        self, conn: _Connection, req_id: int, method: _Method, params: Any, token: int
    ) -> None:
        try:
            try:
                if method.is_async:
                    result = await method.fn(params)
                else:
                    assert self._loop is not None
                    assert self._pool is not None
                    result = await self._loop.run_in_executor(self._pool, method.fn, params)
                if inspect.isawaitable(result):
                    result = await result
                frame = encode_result(req_id, result, self.max_frame)
            except asyncio.CancelledError:
                if self.cancelled:
                    raise  # the grace period ran out: no answer, the connection is closing
                frame = encode_error(
                    req_id, "CancelledError", "the handler was cancelled", self.max_frame
                )
            except BaseException as exc:  # a handler never ends the worker, not even SystemExit
                frame = encode_error(req_id, type(exc).__name__, _message(exc), self.max_frame)
        finally:
            self.inflight.pop(token, None)
        conn.send(frame)
        conn.request_done()

    # --- lifecycle ------------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        """A listening socket at ``path``, mode 0600; a stale socket file there is replaced."""
        path = self.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(
                    errno.EEXIST, f"{path} exists and is not a socket; not replacing it"
                )
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
                live = True
            except OSError as exc:
                live = isinstance(exc, TimeoutError)  # a full backlog: someone is listening
            finally:
                probe.close()
            if live:
                raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            self._inode = os.stat(path).st_ino
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def stop(self, reason: str = "stop requested") -> None:
        """Begins a graceful shutdown (thread-unsafe: call it on the worker's loop)."""
        if self._stop_event is not None and not self._stop_event.is_set():
            self._stop_reason = reason
            self._stop_event.set()

    async def run(self, *, watch_stdin: bool = False, handle_signals: bool = True) -> None:
        """Binds, serves until :meth:`stop`, then shuts down gracefully."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.threads, thread_name_prefix="sark-sidecar"
        )
        signals: list[signal.Signals] = []
        stdin_transport: asyncio.BaseTransport | None = None
        try:
            sock = self._bind()
            self._server = await loop.create_unix_server(
                lambda: _Connection(self), sock=sock, backlog=self.backlog
            )
            if handle_signals:
                signals = self._install_signals(loop)
            if watch_stdin:
                stdin_transport = await self._watch_stdin(loop)
            logger.info(
                "listening on %s (pid %d; methods: %s)",
                self.path,
                self.pid,
                ", ".join(sorted(self.methods)),
            )
            await self._stop_event.wait()
            logger.info("shutting down: %s", self._stop_reason)
        finally:
            try:
                await self._shutdown()
            finally:
                # Only now: a second SIGTERM during the shutdown (stdin EOF and the parent-death
                # signal arrive together) must not kill the worker before it has cleaned up.
                for sig in signals:
                    loop.remove_signal_handler(sig)
                if stdin_transport is not None:
                    stdin_transport.close()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop, sig.name)
            except (RuntimeError, NotImplementedError) as exc:
                # Not the main thread (asyncio's RuntimeError) or a loop without signal support:
                # the worker then stops on stdin EOF, cancellation or stop() (see serve_async).
                logger.debug("%s is not handled: %s", sig.name, exc)
                continue
            installed.append(sig)
        return installed

    async def _watch_stdin(self, loop: asyncio.AbstractEventLoop) -> asyncio.BaseTransport | None:
        """EOF on stdin stops the worker: the supervisor holds the pipe's other end."""
        stdin = sys.stdin
        try:
            if stdin is None:
                raise ValueError("no stdin")
            pipe = os.fdopen(os.dup(stdin.fileno()), "rb", buffering=0)
        except (OSError, ValueError):
            self.stop("stdin is closed")
            return None
        try:
            transport, _ = await loop.connect_read_pipe(lambda: _StdinWatcher(self), pipe)
        except (OSError, ValueError):
            # Not a pipe, socket or character device (a regular file): read it to its end.
            def drain() -> None:
                with pipe:
                    while pipe.read(65536):
                        pass
                loop.call_soon_threadsafe(self.stop, "stdin reached its end")

            threading.Thread(target=drain, name="sark-sidecar-stdin", daemon=True).start()
            return None
        return transport

    async def _shutdown(self) -> None:
        """Stops accepting, lets in-flight requests finish (bounded by the grace period), flushes
        the answers, closes the connections and removes the socket file."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn.pause()  # requests not read yet are never started
        if self.tasks:
            _, still = await asyncio.wait(set(self.tasks), timeout=self.grace_period)
            if still:
                logger.warning(
                    "%d requests still running after the %.1f s grace period; giving up on them",
                    len(still),
                    self.grace_period,
                )
                self.cancelled = True
                for task in still:
                    task.cancel()
                await asyncio.wait(still, timeout=1.0)
        self._no_conns = asyncio.Event()
        for conn in list(self.conns):
            conn.close()  # after flushing what is buffered
        self.connection_gone()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._no_conns.wait(), FLUSH_TIMEOUT)
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._unlink()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _unlink(self) -> None:
        # Only our own socket: a successor may already have bound a new one at the same path.
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    def threads_stuck(self, wait: float = 1.0) -> bool:
        """After :meth:`run`: True when a sync handler is still running in a thread (the grace
        period ran out). Idle pool threads get ``wait`` seconds to notice the shutdown."""
        pool = self._pool
        if pool is None:
            return False
        deadline = time.monotonic() + wait
        threads: list[threading.Thread] = list(getattr(pool, "_threads", ()))
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return any(t.is_alive() for t in threads)


async def serve_async(
    handler: object,
    socket_path: str | os.PathLike[str],
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    backlog: int = DEFAULT_BACKLOG,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    threads: int | None = None,
    watch_stdin: bool = False,
    handle_signals: bool = True,
) -> None:
    """Serves ``handler`` on the Unix socket ``socket_path`` until SIGTERM/SIGINT (when running
    in the main thread and ``handle_signals``), EOF on stdin (``watch_stdin``) or cancellation;
    then shuts down gracefully (see ``docs/sidecar.md``).

    ``handler`` is an object whose public methods are served, or a dict of callables. A path
    over the OS limit raises ``ValueError`` before anything is bound.
    """
    if inspect.isawaitable(handler):
        handler = await handler
    worker = Worker(
        handler,
        check_socket_path(socket_path),
        max_frame=max_frame,
        backlog=backlog,
        grace_period=grace_period,
        threads=threads,
    )
    await worker.run(watch_stdin=watch_stdin, handle_signals=handle_signals)


def serve(
    handler: object,
    socket_path: str | os.PathLike[str],
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    backlog: int = DEFAULT_BACKLOG,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    threads: int | None = None,
    watch_stdin: bool = False,
) -> None:
    """Blocking :func:`serve_async` (``asyncio.run``): returns after a graceful shutdown."""
    asyncio.run(
        serve_async(
            handler,
            socket_path,
            max_frame=max_frame,
            backlog=backlog,
            grace_period=grace_period,
            threads=threads,
            watch_stdin=watch_stdin,
        )
    )
