"""The pure-Python twin of the Rust cache: the same API and semantics on an ``OrderedDict``.

One lock guards the dict (most recent at the end); eviction pops the first item, so it is exact
LRU in O(1). Values removed from the dict are dropped only after the lock is released, so a value
whose ``__del__`` uses the cache cannot deadlock it. One sweeper thread per process serves every
Python cache, as in the Rust backend.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .. import _cache_async
from ..exceptions import CacheError

__all__ = ["PyCache"]

_MISSING: Any = object()
_monotonic = time.monotonic
#: How often the sweeper wakes, and how many entries it looks at per cache per wake-up.
SWEEP_INTERVAL: Final = 1.0
SWEEP_BUDGET: Final = 4096
_WAIT_SLICE: Final = 0.05


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"cache keys must be str, not {type(key).__name__}")
    return key


def _ttl_seconds(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}")
    try:
        seconds = float(ttl)
    except OverflowError:
        raise ValueError("ttl is too large") from None
    if not math.isfinite(seconds) or seconds <= 0.0:
        raise ValueError(f"ttl must be a finite number of seconds > 0, not {seconds}")
    return seconds


def _max_size(max_size: object) -> int:
    if isinstance(max_size, bool) or not isinstance(max_size, int):
        raise TypeError(f"max_size must be an int, not {type(max_size).__name__}")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, not {max_size}")
    return min(max_size, sys.maxsize)


class _Flight:
    __slots__ = ("done", "error", "event", "owner", "value")

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.event = threading.Event()
        self.done = False  # False with the event set: abandoned
        self.value: Any = None
        self.error: BaseException | None = None


class PyCache:
    """An in-process LRU + TTL cache of Python objects. See ``sark_native.Cache``."""

    __slots__ = (
        "__weakref__",
        "_async_flights",
        "_data",
        "_default_ttl",
        "_deletes",
        "_evictions",
        "_expirations",
        "_flights",
        "_flights_lock",
        "_hits",
        "_lock",
        "_max_size",
        "_misses",
        "_name",
        "_sets",
        "_sweep_keys",
    )

    def __init__(
        self, max_size: int = 10_000, ttl: float | None = 300.0, *, name: str = "default"
    ) -> None:
        self._max_size = _max_size(max_size)
        self._default_ttl = None if ttl is None else _ttl_seconds(ttl)
        if not isinstance(name, str):
            raise TypeError(f"name must be str, not {type(name).__name__}")
        self._name = name
        # key -> (value, deadline); deadline 0.0 means never. Most recently used last.
        self._data: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._sets = self._deletes = 0
        self._evictions = self._expirations = 0
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._async_flights: dict[Any, Any] = {}
        self._sweep_keys: list[str] = []
        _registry.add(self)
        _sweeper.register(self)

    # -- reads ------------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` when it is missing or expired."""
        if type(key) is not str:
            _check_key(key)
        with self._lock:
            item = self._data.get(key)  # entries are tuples, never None
            if item is None:
                self._misses += 1
                return default
            deadline = item[1]
            if not deadline or _monotonic() < deadline:
                self._data.move_to_end(key)
                self._hits += 1
                return item[0]
            dead = self._data.pop(key)
            self._misses += 1
            self._expirations += 1
        del dead  # dropped with the lock released
        return default

    def __contains__(self, key: object) -> bool:
        _check_key(key)
        with self._lock:
            item = self._data.get(key, _MISSING)  # type: ignore[call-overload]
            if item is _MISSING:
                return False
            deadline = item[1]
            return not deadline or _monotonic() < deadline

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[str]:
        """A snapshot of the live keys."""
        now = _monotonic()
        with self._lock:
            return [k for k, (_, d) in self._data.items() if not d or now < d]

    def expires_in(self, key: str) -> float | None:
        """Seconds left for the live entry under ``key``; ``None`` when it never expires."""
        _check_key(key)
        with self._lock:
            item = self._data.get(key, _MISSING)
        if item is _MISSING:
            raise KeyError(key)
        deadline: float = item[1]
        if not deadline:
            return None
        left = deadline - _monotonic()
        if left <= 0:
            raise KeyError(key)
        return left

    # -- writes -----------------------------------------------------------------------------------

    def _deadline(self, ttl: float | None) -> float:
        seconds = self._default_ttl if ttl is None else ttl
        return 0.0 if seconds is None else _monotonic() + seconds

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Stores ``value`` (by reference) under ``key``; ``ttl`` in seconds, None: the default."""
        _check_key(key)
        seconds = None if ttl is None else _ttl_seconds(ttl)
        self._store(key, value, seconds)

    def _store(self, key: str, value: Any, ttl: float | None) -> None:
        deadline = self._deadline(ttl)
        if deadline:
            _sweeper.ensure_running()
        old: Any = None
        with self._lock:
            data = self._data
            self._sets += 1
            if key in data:
                old = data[key]
                data[key] = (value, deadline)
                data.move_to_end(key)
            else:
                if len(data) >= self._max_size:
                    _, old = data.popitem(last=False)
                    if old[1] and _monotonic() >= old[1]:
                        self._expirations += 1
                    else:
                        self._evictions += 1
                data[key] = (value, deadline)
        del old

    def delete(self, key: str) -> bool:
        """Removes ``key``; ``True`` when a live entry was removed."""
        _check_key(key)
        with self._lock:
            item = self._data.pop(key, _MISSING)
            if item is _MISSING:
                return False
            live = not item[1] or _monotonic() < item[1]
            if live:
                self._deletes += 1
            else:
                self._expirations += 1
        del item
        return live

    def delete_prefix(self, prefix: str) -> int:
        """Removes every key starting with ``prefix``; returns how many live entries went."""
        _check_key(prefix)
        removed: list[tuple[Any, float]] = []
        live = 0
        with self._lock:
            now = _monotonic()
            for k in [k for k in self._data if k.startswith(prefix)]:
                item = self._data.pop(k)
                removed.append(item)
                if not item[1] or now < item[1]:
                    live += 1
            self._deletes += live
            self._expirations += len(removed) - live
        del removed
        return live

    def clear(self) -> None:
        """Removes every entry (the counters are kept)."""
        with self._lock:
            old = self._data
            self._data = OrderedDict()
        del old

    def touch(self, key: str, ttl: float | None = None) -> bool:
        """Gives the live entry under ``key`` a new time to live; ``False`` when absent."""
        _check_key(key)
        seconds = None if ttl is None else _ttl_seconds(ttl)
        deadline = self._deadline(seconds)
        if deadline:
            _sweeper.ensure_running()
        with self._lock:
            item = self._data.get(key, _MISSING)
            if item is _MISSING or (item[1] and _monotonic() >= item[1]):
                return False
            self._data[key] = (item[0], deadline)
            return True

    # -- loaders ----------------------------------------------------------------------------------

    def get_or_set(self, key: str, factory: Callable[[], Any], ttl: float | None = None) -> Any:
        """The cached value, or ``factory()``'s, stored; one loader per key across threads."""
        _check_key(key)
        seconds = None if ttl is None else _ttl_seconds(ttl)
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            return value
        me = threading.get_ident()
        while True:
            with self._flights_lock:
                flight = self._flights.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._flights[key] = _Flight(me)
                elif flight.owner == me:
                    raise CacheError(
                        f"get_or_set({key!r}): the factory asked for its own key; "
                        "it would wait for itself"
                    )
            if leader:
                return self._load(key, factory, seconds, flight)
            while not flight.event.wait(_WAIT_SLICE):
                pass
            if flight.done:
                if flight.error is not None:
                    raise flight.error
                return flight.value
            # abandoned: try again, maybe as the leader

    def _load(
        self, key: str, factory: Callable[[], Any], ttl: float | None, flight: _Flight
    ) -> Any:
        try:
            value = self._peek(key)
            if value is _MISSING:
                value = factory()
                self._store(key, value, ttl)
        except Exception as exc:
            flight.error = exc
            flight.done = True
            raise
        else:
            flight.value = value
            flight.done = True
            return value
        finally:  # also on KeyboardInterrupt etc.: not done means abandoned
            with self._flights_lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.event.set()

    def _peek(self, key: str) -> Any:
        with self._lock:
            item = self._data.get(key, _MISSING)
        if item is _MISSING or (item[1] and _monotonic() >= item[1]):
            return _MISSING
        return item[0]

    def aget_or_set(
        self, key: str, factory: Callable[[], Awaitable[Any] | Any], ttl: float | None = None
    ) -> Awaitable[Any]:
        """Awaitable ``get_or_set`` for asyncio: one loader per key across a loop's tasks."""
        _check_key(key)
        if ttl is not None:
            _ttl_seconds(ttl)
        return _cache_async.aget_or_set(self, self._async_flights, key, factory, ttl)

    # -- introspection ----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """``{"hits", "misses", "evictions", "expirations", "size", "max_size"}``."""
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._evictions,
                "expirations": self._expirations,
                "size": len(self._data),
                "max_size": self._max_size,
            }

    def _counters(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "sets": self._sets,
                "deletes": self._deletes,
                "evictions": self._evictions,
                "expirations": self._expirations,
                "size": len(self._data),
                "max_size": self._max_size,
            }

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def ttl(self) -> float | None:
        return self._default_ttl

    @property
    def name(self) -> str:
        return self._name

    @property
    def backend(self) -> str:
        return "python"

    def __repr__(self) -> str:
        return (
            f"<sark_native.Cache name={self._name!r} backend='python' size={len(self._data)} "
            f"max_size={self._max_size} ttl={self._default_ttl}>"
        )

    def __del__(self) -> None:
        try:
            _retire(self._name, self._counters())
        except Exception:  # interpreter shutdown: module globals may be gone
            return

    def _sweep(self, budget: int) -> None:
        """Removes expired entries among up to ``budget`` keys, oldest first."""
        dead: list[tuple[Any, float]] = []
        with self._lock:
            if not self._sweep_keys:
                self._sweep_keys = list(self._data)
            batch = self._sweep_keys[-budget:]
            del self._sweep_keys[-budget:]
            now = _monotonic()
            for k in batch:
                item = self._data.get(k)
                if item is not None and item[1] and now >= item[1]:
                    dead.append(self._data.pop(k))
            self._expirations += len(dead)
        del dead


# -- metrics registry ------------------------------------------------------------------------------

_registry: weakref.WeakSet[PyCache] = weakref.WeakSet()
_retired: dict[str, dict[str, int]] = {}
_retired_lock = threading.Lock()


def _retire(name: str, counters: dict[str, int]) -> None:
    counters["size"] = counters["max_size"] = 0
    with _retired_lock:
        total = _retired.setdefault(name, dict.fromkeys(counters, 0))
        for k, v in counters.items():
            total[k] += v


def cache_metrics() -> list[tuple[str, dict[str, int]]]:
    """The counters of every Python cache, summed by name (dropped caches included)."""
    with _retired_lock:
        totals = {name: dict(c) for name, c in _retired.items()}
    for cache in list(_registry):
        counters = cache._counters()
        total = totals.setdefault(cache.name, dict.fromkeys(counters, 0))
        for k, v in counters.items():
            total[k] += v
    return list(totals.items())


# -- the sweeper -----------------------------------------------------------------------------------


class _Sweeper:
    """One daemon thread per process that sweeps every Python cache; fork-aware."""

    def __init__(self) -> None:
        self._caches: weakref.WeakSet[PyCache] = weakref.WeakSet()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._paused = False
        self._busy = False
        self._stopped = False

    def register(self, cache: PyCache) -> None:
        with self._cond:
            self._caches.add(cache)

    def ensure_running(self) -> None:
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._cond:
            if self._thread is not None or self._stopped:
                return
            t = threading.Thread(target=self._run, name="sark-cache-sweeper-py", daemon=True)
            self._thread = t
            t.start()

    def _run(self) -> None:
        me = threading.current_thread()
        with self._cond:
            while True:
                self._cond.wait(SWEEP_INTERVAL)
                while self._paused and not self._stopped:
                    self._cond.wait()
                if self._stopped or self._thread is not me:
                    return
                caches = list(self._caches)
                if not caches:
                    self._thread = None
                    return
                self._busy = True
                self._cond.release()
                try:
                    for cache in caches:
                        cache._sweep(SWEEP_BUDGET)
                    del caches, cache
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()

    def before_fork(self) -> None:
        with self._cond:
            self._paused = True
            while self._busy:
                self._cond.wait()

    def after_fork_parent(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def after_fork_child(self) -> None:
        # The thread did not survive the fork: start a fresh one on first use.
        self._cond = threading.Condition()
        self._paused = self._busy = False
        self._thread = None

    def shutdown(self) -> None:
        with self._cond:
            self._stopped = True
            self._paused = False
            self._cond.notify_all()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()


_sweeper = _Sweeper()
atexit.register(_sweeper.shutdown)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_sweeper.before_fork,
        after_in_parent=_sweeper.after_fork_parent,
        after_in_child=_sweeper.after_fork_child,
    )
