"""The ML sidecar: worker processes serving a handler over a Unix socket, a client of one worker,
and a supervisor of several.

* :func:`serve` / :func:`serve_async` (and ``python -m sark_native.sidecar module:attr --socket
  PATH``): the worker side, always Python (asyncio).
* :class:`SidecarClient`: a pipelined client of one worker socket.
* :class:`Sidecar`: spawns ``workers`` processes, supervises and restarts them, and spreads
  requests over the live ones.

``SidecarClient(...)`` and ``Sidecar(...)`` return the backend's object itself (the native one
once it is built, else ``PySidecarClient`` / ``PySidecar``); ``isinstance`` holds for both. The
contract, wire protocol and error table are in ``docs/sidecar.md``.
"""

from __future__ import annotations

import os
import sys
from abc import ABCMeta
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import _backend
from .._backend import BackendChoice
from .._fallback.sidecar import PySidecar, PySidecarClient
from ..exceptions import BackendUnavailableError
from ._protocol import DEFAULT_MAX_FRAME, MAX_DEPTH, PING
from ._worker import serve, serve_async

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_DEPTH",
    "PING",
    "Sidecar",
    "SidecarClient",
    "serve",
    "serve_async",
]


def _native_class(name: str, backend: object) -> Any | None:
    """The native class ``name`` when ``backend`` resolves to Rust, else None (the Python path).

    While ``_backend.NATIVE_PENDING`` lists "sidecar", ``"rust"`` raises
    ``BackendUnavailableError`` and ``"auto"`` picks Python.
    """
    if _backend.resolve("sidecar", backend) == "rust":
        cls = getattr(_backend.native(), name, None)
        if cls is None and backend == "rust":
            raise BackendUnavailableError(f"the native {name} is not built yet")
        return cls
    return None


class SidecarClient(metaclass=ABCMeta):  # noqa: B024 - a virtual base: both backends register
    """A client of one sidecar worker socket: pipelined requests matched by id, per-request
    timeouts, a frame cap both ways, reconnect with backoff, a bound on requests in flight."""

    def __new__(
        cls,
        socket_path: str | os.PathLike[str],
        *,
        backend: BackendChoice = "auto",
        timeout: float = 5.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        connections: int = 2,
        max_in_flight: int = 1024,
        connect_timeout: float | None = None,
    ) -> SidecarClient:
        options: dict[str, Any] = {
            "timeout": timeout,
            "max_frame": max_frame,
            "connections": connections,
            "max_in_flight": max_in_flight,
            "connect_timeout": connect_timeout,
        }
        native = _native_class("SidecarClient", backend)
        if native is not None:
            client: SidecarClient = native(socket_path, **options)
            return client
        return PySidecarClient(socket_path, **options)  # type: ignore[return-value]

    if TYPE_CHECKING:
        # The interface both backends implement.
        socket_path: str
        timeout: float
        max_frame: int
        backend: str

        async def request(
            self, method: str, params: Any = None, *, timeout: float | None = None
        ) -> Any: ...
        def close(self) -> None: ...
        async def aclose(self) -> None: ...
        async def __aenter__(self) -> SidecarClient: ...
        async def __aexit__(self, *exc_info: object) -> None: ...
        def stats(self) -> dict[str, Any]: ...


class Sidecar(metaclass=ABCMeta):  # noqa: B024 - a virtual base: both backends register
    """Spawns ``workers`` processes serving ``app`` ("pkg.module:attr"), supervises them
    (pings, restarts with backoff, no orphans) and spreads requests over the live ones.
    Use as ``async with Sidecar(...) as sc: await sc.request(...)``."""

    def __new__(
        cls,
        app: str,
        *,
        backend: BackendChoice = "auto",
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
    ) -> Sidecar:
        options: dict[str, Any] = {
            "workers": workers,
            "timeout": timeout,
            "python": python,
            "env": env,
            "cwd": cwd,
            "start_timeout": start_timeout,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "hang_timeout": hang_timeout,
            "grace_period": grace_period,
            "max_frame": max_frame,
            "connections": connections,
            "max_in_flight": max_in_flight,
        }
        # One supervision policy (PySidecar) for both paths; on the Rust path the workers are
        # spawned, watched and reaped natively and served by the native client.
        chosen = _backend.resolve("sidecar", backend)
        return PySidecar(app, backend=chosen, **options)  # type: ignore[return-value]

    if TYPE_CHECKING:
        app: str
        workers: int
        backend: str

        @property
        def pids(self) -> list[int]: ...
        @property
        def restarts(self) -> int: ...
        @property
        def socket_dir(self) -> str | None: ...
        async def start(self) -> None: ...
        async def request(
            self, method: str, params: Any = None, *, timeout: float | None = None
        ) -> Any: ...
        def close(self) -> None: ...
        async def aclose(self) -> None: ...
        async def __aenter__(self) -> Sidecar: ...
        async def __aexit__(self, *exc_info: object) -> None: ...
        def stats(self) -> dict[str, Any]: ...


SidecarClient.register(PySidecarClient)
Sidecar.register(PySidecar)
if _backend.RUST_AVAILABLE:
    for _name, _facade in (("SidecarClient", SidecarClient), ("Sidecar", Sidecar)):
        _cls = getattr(_backend.native(), _name, None)
        if _cls is not None:
            _facade.register(_cls)
