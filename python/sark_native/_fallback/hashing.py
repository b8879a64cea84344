"""The pure-Python twin of the native hasher: argon2-cffi on a bounded ThreadPoolExecutor.

Same API, caps, exceptions and PHC parsing rules as ``src/core/hashing`` (the parser here mirrors
``phc.rs`` so both backends refuse the same strings with the same class). argon2-cffi is imported
on first use, so ``import sark_native`` works without it.
"""

from __future__ import annotations

import asyncio
import binascii
import concurrent.futures
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ..exceptions import (
    BackendUnavailableError,
    InvalidHashError,
    OverloadedError,
    VerificationError,
    VerifyMismatchError,
)

__all__ = [
    "BUCKETS",
    "DEFAULT_MAX_PENDING",
    "WORKERS_ENV",
    "Phc",
    "PyPasswordHasher",
    "configure_pool",
    "default_workers",
    "hashing_metrics",
    "parse_phc",
]

T = TypeVar("T")

WORKERS_ENV = "SARK_NATIVE_HASH_WORKERS"
DEFAULT_MAX_PENDING = 1024
MAX_WORKERS = 256
MAX_PHC_LEN = 4096
MIN_SALT_LEN = 8
MIN_HASH_LEN = 4
MAX_BYTES_LEN = 1024
#: Upper bounds (seconds) of the duration histogram, as in ``core/hashing/metrics.rs``.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_TYPES = ("argon2d", "argon2i", "argon2id")
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]{0,9})\Z")
_B64 = re.compile(r"[A-Za-z0-9+/]*\Z")


@dataclass(frozen=True)
class Phc:
    """The decoded parts of a PHC string."""

    type: str
    version: int
    m_cost: int
    t_cost: int
    p_cost: int
    salt: bytes
    hash: bytes


def _invalid(what: str) -> InvalidHashError:
    return InvalidHashError(f"invalid Argon2 hash: {what}")


def _decimal(s: str, what: str) -> int:
    if not _DECIMAL.match(s) or int(s) > 0xFFFFFFFF:
        raise _invalid(what)
    return int(s)


def _b64(s: str, what: str) -> bytes:
    if len(s) % 4 == 1 or len(s) > (MAX_BYTES_LEN * 4 + 2) // 3 or not _B64.match(s):
        raise _invalid(what)
    try:
        raw = binascii.a2b_base64(s + "=" * (-len(s) % 4))
    except binascii.Error:
        raise _invalid(what) from None
    if binascii.b2a_base64(raw, newline=False).decode().rstrip("=") != s:
        raise _invalid(what)  # non-zero unused bits
    return raw


def parse_phc(text: str) -> Phc:
    """Parses a PHC string with the rules of ``core/hashing/phc.rs``; no caps checked."""
    if len(text) > MAX_PHC_LEN:
        raise _invalid("too long")
    parts = text.split("$")
    if parts[0] != "":
        raise _invalid("must start with '$'")
    if len(parts) < 2 or parts[1] not in _TYPES:
        raise _invalid("unknown algorithm")
    i = 2
    if len(parts) <= i:
        raise _invalid("missing parameters")
    version = 16
    if parts[i].startswith("v="):
        version = _decimal(parts[i][2:], "version")
        if version not in (16, 19):
            raise _invalid("unsupported version")
        i += 1
        if len(parts) <= i:
            raise _invalid("missing parameters")
    items = parts[i].split(",")
    values = []
    for key, item in zip(("m", "t", "p"), items, strict=False):
        if not item.startswith(key + "="):
            raise _invalid("parameters must be m=..,t=..,p=..")
        values.append(_decimal(item[2:], key))
    if len(values) < 3:
        raise _invalid("missing parameter")
    if len(items) > 3:
        raise _invalid("unexpected parameter")
    m_cost, t_cost, p_cost = values
    if len(parts) <= i + 1:
        raise _invalid("missing salt")
    salt = _b64(parts[i + 1], "salt")
    if len(parts) <= i + 2:
        raise _invalid("missing hash")
    digest = _b64(parts[i + 2], "hash")
    if len(parts) > i + 3:
        raise _invalid("trailing fields")
    if not MIN_SALT_LEN <= len(salt) <= MAX_BYTES_LEN:
        raise _invalid("salt length out of range")
    if not MIN_HASH_LEN <= len(digest) <= MAX_BYTES_LEN:
        raise _invalid("hash length out of range")
    if t_cost < 1 or not 1 <= p_cost <= 0xFFFFFF or m_cost < 8 * p_cost:
        raise _invalid("parameters out of range")
    return Phc(parts[1], version, m_cost, t_cost, p_cost, salt, digest)


# --- the pool -----------------------------------------------------------------------------------


def default_workers() -> int:
    """max(min(cpu, 4), 1), or ``SARK_NATIVE_HASH_WORKERS`` when it is a valid count."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw.isdigit() and 1 <= int(raw) <= MAX_WORKERS:
        return int(raw)
    return max(min(os.cpu_count() or 1, 4), 1)


class _OpCounters:
    def __init__(self) -> None:
        self.ok = 0
        self.mismatch = 0
        self.error = 0
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def snapshot(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mismatch": self.mismatch,
            "error": self.error,
            "buckets": list(self.buckets),
            "sum": self.sum,
        }


_metrics_lock = threading.Lock()
_counters = {"hash": _OpCounters(), "verify": _OpCounters()}
_rejected = 0


def _record(op: str, outcome: str, seconds: float) -> None:
    slot = next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
    with _metrics_lock:
        c = _counters[op]
        setattr(c, outcome, getattr(c, outcome) + 1)
        c.buckets[slot] += 1
        c.sum += seconds


class _Pool:
    """A ThreadPoolExecutor with a bound on jobs waiting for a worker."""

    def __init__(self, workers: int, max_pending: int) -> None:
        self.workers = workers
        self.max_pending = max_pending
        self.pid = os.getpid()
        self.queued = 0
        self.running = 0
        self.lock = threading.Lock()
        # Imported at module level: `concurrent.futures` loads its executors lazily through a
        # module __getattr__, and an import that a thread has in progress when another thread
        # forks leaves the child's import lock for that module held forever (CPython 3.11).
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sark-hash-py")

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        global _rejected
        with self.lock:
            if self.queued >= self.max_pending:
                with _metrics_lock:
                    _rejected += 1
                raise OverloadedError(f"the hash queue is full ({self.max_pending} jobs waiting)")
            self.queued += 1

        def job() -> T:
            with self.lock:
                self.queued -= 1
                self.running += 1
            try:
                return fn()
            finally:
                with self.lock:
                    self.running -= 1

        try:
            return self.executor.submit(job)
        except RuntimeError as exc:  # the executor is shut down (interpreter exit)
            with self.lock:
                self.queued -= 1
            raise OverloadedError("the hash pool is shut down") from exc


_pool_lock = threading.Lock()
_pool: _Pool | None = None
_settings: tuple[int, int] | None = None


def _current_settings() -> tuple[int, int]:
    return _settings or (default_workers(), DEFAULT_MAX_PENDING)


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        pool = _pool
        if pool is None or pool.pid != os.getpid():
            # None yet, or inherited through fork() (its threads are not in this process).
            pool = _pool = _Pool(*_current_settings())
        return pool


def configure_pool(workers: int | None = None, max_pending: int | None = None) -> tuple[int, int]:
    """Sets the pool size of the Python path; a running pool finishes its queue and retires."""
    global _pool, _settings
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"hash_workers must be between 1 and {MAX_WORKERS}, got {workers}")
    if max_pending is not None and max_pending < 1:
        raise ValueError(f"hash_max_pending must be >= 1, got {max_pending}")
    with _pool_lock:
        w, p = _current_settings()
        _settings = (workers or w, max_pending or p)
        old, _pool = _pool, None
    if old is not None and old.pid == os.getpid():
        old.executor.shutdown(wait=False)
    return _settings


def _after_fork_child() -> None:
    # A pool thread of the parent may have held either lock at the fork.
    global _pool, _pool_lock, _metrics_lock
    _pool_lock = threading.Lock()
    _metrics_lock = threading.Lock()
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_child)


def hashing_metrics() -> dict[str, Any]:
    """The Python path's counters, in the shape of the native ``_hashing_metrics()``."""
    pool = _pool
    workers, max_pending = _current_settings()
    alive = pool is not None and pool.pid == os.getpid()
    with _metrics_lock:
        out: dict[str, Any] = {op: c.snapshot() for op, c in _counters.items()}
        out["rejected"] = _rejected
    out["bounds"] = list(BUCKETS)
    out["queue_depth"] = pool.queued if alive and pool is not None else 0
    out["running"] = pool.running if alive and pool is not None else 0
    out["workers"] = pool.workers if alive and pool is not None else workers
    out["max_pending"] = pool.max_pending if alive and pool is not None else max_pending
    return out


# --- the hasher ---------------------------------------------------------------------------------


def _type_name(obj: object) -> str:
    return type(obj).__name__


def _int_param(value: object, name: str) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {_type_name(value)}")
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} out of range: {value}")
    return value


def _phc_text(hash: object) -> str:
    if isinstance(hash, str):
        return hash
    if isinstance(hash, bytes):
        return hash.decode("utf-8", "replace")
    raise TypeError(f"hash must be str or bytes, not {_type_name(hash)}")


class PyPasswordHasher:
    """Argon2id on argon2-cffi, with the native hasher's API, caps and exceptions."""

    backend = "python"

    def __init__(
        self,
        time_cost: int = 3,
        memory_cost: int = 65536,
        parallelism: int = 1,
        hash_len: int = 32,
        salt_len: int = 16,
        *,
        max_password_len: int = 4096,
        max_time_cost: int = 16,
        max_memory_cost: int = 262_144,
        max_parallelism: int = 16,
    ) -> None:
        t = _int_param(time_cost, "time_cost")
        m = _int_param(memory_cost, "memory_cost")
        p = _int_param(parallelism, "parallelism")
        hl = _int_param(hash_len, "hash_len")
        sl = _int_param(salt_len, "salt_len")
        mpl = _int_param(max_password_len, "max_password_len")
        mt = _int_param(max_time_cost, "max_time_cost")
        mm = _int_param(max_memory_cost, "max_memory_cost")
        mp = _int_param(max_parallelism, "max_parallelism")
        if not 1 <= p <= 0xFFFFFF:
            raise ValueError(f"parallelism must be >= 1, got {p}")
        if t < 1:
            raise ValueError(f"time_cost must be >= 1, got {t}")
        if m < 8 * p:
            raise ValueError(f"memory_cost must be >= 8 * parallelism ({8 * p}), got {m}")
        if not MIN_HASH_LEN <= hl <= MAX_BYTES_LEN:
            raise ValueError(
                f"hash_len must be between {MIN_HASH_LEN} and {MAX_BYTES_LEN}, got {hl}"
            )
        if not MIN_SALT_LEN <= sl <= MAX_BYTES_LEN:
            raise ValueError(
                f"salt_len must be between {MIN_SALT_LEN} and {MAX_BYTES_LEN}, got {sl}"
            )
        if mpl < 1:
            raise ValueError("max_password_len must be >= 1")
        if mt < 1 or mp < 1 or mm < 8:
            raise ValueError("the caps must be >= 1 (max_memory_cost >= 8)")
        if t > mt or m > mm or p > mp:
            raise ValueError(f"parameters beyond the caps (t <= {mt}, m <= {mm} KiB, p <= {mp})")
        try:
            import argon2.exceptions
            from argon2 import PasswordHasher as _CffiHasher
            from argon2 import Type
        except ImportError as exc:
            raise BackendUnavailableError(
                "the pure-Python PasswordHasher needs argon2-cffi: "
                "pip install 'sark-native[hashing]'"
            ) from exc

        self.time_cost, self.memory_cost, self.parallelism = t, m, p
        self.hash_len, self.salt_len, self.max_password_len = hl, sl, mpl
        self._caps = (mt, mm, mp)
        self._ph = _CffiHasher(t, m, p, hl, sl, type=Type.ID)
        # Resolved here, not in the jobs: no import runs on a pool thread (see _Pool).
        self._errors = argon2.exceptions

    def __repr__(self) -> str:
        return (
            f"PasswordHasher(time_cost={self.time_cost}, memory_cost={self.memory_cost}, "
            f"parallelism={self.parallelism}, hash_len={self.hash_len}, "
            f"salt_len={self.salt_len}, backend='python')"
        )

    def _password(self, password: object) -> bytes:
        if isinstance(password, str):
            pw = password.encode("utf-8")
        elif isinstance(password, bytes):
            pw = password
        else:
            raise TypeError(f"password must be str or bytes, not {_type_name(password)}")
        if len(pw) > self.max_password_len:
            raise ValueError(f"password is longer than {self.max_password_len} bytes")
        return pw

    def _capped(self, text: str) -> Phc:
        phc = parse_phc(text)
        mt, mm, mp = self._caps
        if phc.t_cost > mt or phc.m_cost > mm or phc.p_cost > mp:
            raise InvalidHashError(
                f"hash parameters m={phc.m_cost},t={phc.t_cost},p={phc.p_cost} are beyond the "
                f"caps (m <= {mm}, t <= {mt}, p <= {mp})"
            )
        return phc

    # The jobs, run on a pool thread.

    def _hash_job(self, pw: bytes) -> Callable[[], str]:
        def job() -> str:
            started = time.perf_counter()
            try:
                out = self._ph.hash(pw)
            except Exception:
                _record("hash", "error", time.perf_counter() - started)
                raise
            _record("hash", "ok", time.perf_counter() - started)
            return out

        return job

    def _verify_job(self, text: str, pw: bytes) -> Callable[[], bool]:
        ae = self._errors

        def job() -> bool:
            started = time.perf_counter()
            outcome = "error"
            try:
                self._capped(text)
                self._ph.verify(text, pw)
                outcome = "ok"
                return True
            except ae.VerifyMismatchError:
                outcome = "mismatch"
                raise VerifyMismatchError("The password does not match the supplied hash") from None
            except ae.InvalidHashError as exc:
                raise InvalidHashError(f"invalid Argon2 hash: {exc}") from None
            except ae.VerificationError as exc:
                raise VerificationError(str(exc)) from None
            finally:
                _record("verify", outcome, time.perf_counter() - started)

        return job

    # The API.

    def hash(self, password: str | bytes) -> str:
        """Hashes ``password`` into a PHC string (on the pool; this thread waits)."""
        return _get_pool().submit(self._hash_job(self._password(password))).result()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        """``True``, or :class:`VerifyMismatchError` / :class:`InvalidHashError`."""
        text = _phc_text(hash)
        pw = self._password(password)
        return _get_pool().submit(self._verify_job(text, pw)).result()

    def hash_async(self, password: str | bytes) -> Awaitable[str]:
        """An awaitable of :meth:`hash`; the event loop never blocks."""
        job = self._hash_job(self._password(password))
        loop = asyncio.get_running_loop()
        return asyncio.wrap_future(_get_pool().submit(job), loop=loop)

    def verify_async(self, hash: str | bytes, password: str | bytes) -> Awaitable[bool]:
        """An awaitable of :meth:`verify`."""
        job = self._verify_job(_phc_text(hash), self._password(password))
        loop = asyncio.get_running_loop()
        return asyncio.wrap_future(_get_pool().submit(job), loop=loop)

    def check_needs_rehash(self, hash: str | bytes) -> bool:
        """``True`` when ``hash`` was not made with this hasher's parameters."""
        phc = parse_phc(_phc_text(hash))
        return (phc.type, phc.version, phc.m_cost, phc.t_cost, phc.p_cost) != (
            "argon2id",
            19,
            self.memory_cost,
            self.time_cost,
            self.parallelism,
        ) or (len(phc.salt), len(phc.hash)) != (self.salt_len, self.hash_len)
