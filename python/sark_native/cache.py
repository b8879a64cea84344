"""The public ``Cache``: an in-process LRU + TTL cache, Rust or pure Python behind one API.

``Cache(...)`` returns the backend's object itself (no wrapper on the hot path): the native
``sark_native._native.Cache`` or the pure-Python ``PyCache``. ``isinstance(obj, Cache)`` holds for
both. The semantics are documented in ``docs/cache.md``.
"""

from __future__ import annotations

from abc import ABCMeta
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import _backend
from ._backend import BackendChoice
from ._fallback.cache import PyCache

__all__ = ["Cache"]


class Cache(metaclass=ABCMeta):  # noqa: B024 - a virtual base: both backends register
    """An in-process LRU + TTL cache of Python objects (values are stored by reference).

    ``max_size`` bounds the number of entries (strictly, also under concurrent writers); ``ttl``
    is the default time to live in seconds (``None``: no expiry); ``name`` labels the metrics.
    """

    def __new__(
        cls,
        max_size: int = 10_000,
        ttl: float | None = 300.0,
        *,
        backend: BackendChoice = "auto",
        name: str = "default",
    ) -> Cache:
        if _backend.resolve("cache", backend) == "rust":
            native: Cache = _backend.native().Cache(max_size, ttl, name=name)
            return native
        return PyCache(max_size, ttl, name=name)  # type: ignore[return-value]

    if TYPE_CHECKING:
        # The interface both backends implement (for type checkers; see _native.pyi).
        max_size: int
        ttl: float | None
        name: str
        backend: str

        def get(self, key: str, default: Any = None) -> Any: ...
        def set(self, key: str, value: Any, ttl: float | None = None) -> None: ...
        def delete(self, key: str) -> bool: ...
        def delete_prefix(self, prefix: str) -> int: ...
        def clear(self) -> None: ...
        def __len__(self) -> int: ...
        def __contains__(self, key: object) -> bool: ...
        def get_or_set(
            self, key: str, factory: Callable[[], Any], ttl: float | None = None
        ) -> Any: ...
        def aget_or_set(
            self, key: str, factory: Callable[[], Awaitable[Any] | Any], ttl: float | None = None
        ) -> Awaitable[Any]: ...
        def stats(self) -> dict[str, int]: ...
        def keys(self) -> list[str]: ...
        def expires_in(self, key: str) -> float | None: ...
        def touch(self, key: str, ttl: float | None = None) -> bool: ...


Cache.register(PyCache)
if _backend.RUST_AVAILABLE:
    Cache.register(_backend.native().Cache)
