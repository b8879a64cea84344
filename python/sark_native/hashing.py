"""The public ``PasswordHasher``: Argon2id compatible with argon2-cffi, Rust or pure Python behind
one API, and :func:`configure` for the process-wide hash pool.

``PasswordHasher(...)`` returns the backend's object itself: the native
``sark_native._native.PasswordHasher`` or the pure-Python ``PyPasswordHasher``.
``isinstance(obj, PasswordHasher)`` holds for both. Semantics: ``docs/hashing.md``.
"""

from __future__ import annotations

from abc import ABCMeta
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from . import _backend
from ._backend import BackendChoice
from ._fallback import hashing as _py_hashing
from ._fallback.hashing import PyPasswordHasher

__all__ = ["PasswordHasher", "configure"]


class PasswordHasher(metaclass=ABCMeta):  # noqa: B024 - a virtual base: both backends register
    """Argon2id password hashing on one bounded pool per process.

    Defaults follow argon2-cffi and RFC 9106 (t=3, m=64 MiB, p=1). Stored hashes asking for more
    than the caps (``max_time_cost``, ``max_memory_cost`` KiB, ``max_parallelism``) are refused
    with ``InvalidHashError`` before any work; passwords longer than ``max_password_len`` bytes
    raise ``ValueError``.
    """

    def __new__(
        cls,
        time_cost: int = 3,
        memory_cost: int = 65536,
        parallelism: int = 1,
        hash_len: int = 32,
        salt_len: int = 16,
        *,
        backend: BackendChoice = "auto",
        max_password_len: int = 4096,
        max_time_cost: int = 16,
        max_memory_cost: int = 262_144,
        max_parallelism: int = 16,
    ) -> PasswordHasher:
        kwargs = {
            "max_password_len": max_password_len,
            "max_time_cost": max_time_cost,
            "max_memory_cost": max_memory_cost,
            "max_parallelism": max_parallelism,
        }
        args = (time_cost, memory_cost, parallelism, hash_len, salt_len)
        if _backend.resolve("hashing", backend) == "rust":
            native: PasswordHasher = _backend.native().PasswordHasher(*args, **kwargs)
            return native
        return PyPasswordHasher(*args, **kwargs)  # type: ignore[return-value]

    if TYPE_CHECKING:
        # The interface both backends implement (for type checkers; see _native.pyi).
        time_cost: int
        memory_cost: int
        parallelism: int
        hash_len: int
        salt_len: int
        max_password_len: int
        backend: _backend.Backend

        def hash(self, password: str | bytes) -> str: ...
        def verify(self, hash: str | bytes, password: str | bytes) -> bool: ...
        def hash_async(self, password: str | bytes) -> Awaitable[str]: ...
        def verify_async(self, hash: str | bytes, password: str | bytes) -> Awaitable[bool]: ...
        def check_needs_rehash(self, hash: str | bytes) -> bool: ...


PasswordHasher.register(PyPasswordHasher)
if _backend.RUST_AVAILABLE:
    PasswordHasher.register(_backend.native().PasswordHasher)


def configure(*, hash_workers: int | None = None, hash_max_pending: int | None = None) -> None:
    """Sizes the process-wide hash pool of both backends (``None`` keeps a value).

    ``hash_workers`` defaults to ``SARK_NATIVE_HASH_WORKERS`` or max(min(cpu, 4), 1);
    ``hash_max_pending`` (default 1024) bounds the jobs waiting for a worker: past it a call
    raises ``OverloadedError`` at once. A running pool finishes its queued jobs and retires; the
    next hash starts a pool of the new size.
    """
    for name, value in (("hash_workers", hash_workers), ("hash_max_pending", hash_max_pending)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    _py_hashing.configure_pool(hash_workers, hash_max_pending)
    if _backend.RUST_AVAILABLE:
        _backend.native()._configure_hashing(hash_workers, hash_max_pending)
