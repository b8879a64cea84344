"""``sark_native.Cache`` under threads: the size bound, single flight, and re-entrant ``__del__``.

Each test runs on both backends (the ``backend`` fixture). Threads report their errors back to the
test instead of raising inside the thread, and anything that could deadlock runs in a daemon
thread joined with a generous timeout, so a deadlock shows up as a failed assertion.
"""

from __future__ import annotations

import functools
import gc
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sark_native import Cache
from sark_native.exceptions import CacheError

#: Long enough for a slow CI machine, short enough not to hang the run.
JOIN_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def fast_thread_switching() -> Iterator[None]:
    """Switch threads far more often than the default 5 ms, to shake out races on either path."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def make(backend: Any, **kwargs: Any) -> Cache:
    return Cache(backend=backend, **kwargs)


def run_threads(targets: list[Callable[[], object]], timeout: float = JOIN_TIMEOUT) -> list[Any]:
    """Run each target in its own thread; return their results (or the exceptions they raised)."""
    results: list[Any] = [None] * len(targets)

    def wrap(i: int, target: Callable[[], object]) -> None:
        try:
            results[i] = target()
        except BaseException as exc:
            results[i] = exc

    threads = [
        threading.Thread(target=wrap, args=(i, t), daemon=True) for i, t in enumerate(targets)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {timeout} s (deadlock?): {stuck}"
    return results


def run_guarded(fn: Callable[[], object], timeout: float = JOIN_TIMEOUT) -> object:
    """Run ``fn`` in a daemon thread; fail (instead of hanging) when it does not return."""
    (result,) = run_threads([fn], timeout)
    if isinstance(result, BaseException):
        raise result
    return result


def no_errors(results: list[Any]) -> None:
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} thread(s) failed, first: {errors[0]!r}"


# --- the size bound ------------------------------------------------------------------------------


def test_max_size_holds_under_concurrent_writers(backend: str) -> None:
    max_size = 100
    n_threads = 8
    per_thread = 2_000
    c = make(backend, max_size=max_size, ttl=None)
    start = threading.Barrier(n_threads + 1)
    writers_done = threading.Event()
    seen: list[tuple[int, int]] = []

    def writer(t: int) -> Callable[[], None]:
        def run() -> None:
            start.wait(JOIN_TIMEOUT)
            for i in range(per_thread):
                c.set(f"t{t}-{i}", i)

        return run

    def watcher() -> None:
        start.wait(JOIN_TIMEOUT)
        while not writers_done.is_set():
            seen.append((len(c), c.stats()["size"]))

    watch = threading.Thread(target=watcher, daemon=True)
    watch.start()
    try:
        no_errors(run_threads([writer(t) for t in range(n_threads)]))
    finally:
        writers_done.set()
        watch.join(JOIN_TIMEOUT)
    assert not watch.is_alive()
    assert seen, "the watcher never sampled the cache"
    assert max(n for n, _ in seen) <= max_size
    assert max(size for _, size in seen) <= max_size

    stats = c.stats()
    assert len(c) == max_size
    assert stats["size"] == max_size
    assert len(c.keys()) == max_size
    # Every insert of a new key into the full cache evicted exactly one entry.
    assert stats["evictions"] == n_threads * per_thread - max_size


def test_mixed_operations_keep_the_cache_consistent(backend: str) -> None:
    max_size = 64
    n_threads = 8
    ops_per_thread = 3_000
    c = make(backend, max_size=max_size, ttl=None)
    keys = [f"k{i}" for i in range(300)]
    start = threading.Barrier(n_threads)
    gets = [0] * n_threads

    def worker(t: int) -> Callable[[], None]:
        rng = random.Random(t)

        def run() -> None:
            start.wait(JOIN_TIMEOUT)
            for _ in range(ops_per_thread):
                key = rng.choice(keys)
                op = rng.random()
                if op < 0.35:
                    value = c.get(key)
                    gets[t] += 1
                    assert value is None or value[0] == key
                elif op < 0.75:
                    c.set(key, (key, t))
                elif op < 0.85:
                    c.delete(key)
                elif op < 0.97:
                    _ = key in c
                else:
                    assert len(c.keys()) <= max_size
                assert len(c) <= max_size

        return run

    no_errors(run_threads([worker(t) for t in range(n_threads)]))

    stats = c.stats()
    assert stats["hits"] + stats["misses"] == sum(gets)
    live = c.keys()
    assert len(live) == len(c) == stats["size"] <= max_size
    assert len(set(live)) == len(live)
    for key in live:
        value = c.get(key)
        assert value is not None
        assert value[0] == key


def test_concurrent_get_or_set_under_eviction_pressure(backend: str) -> None:
    c = make(backend, max_size=4, ttl=None)
    keys = [f"k{i}" for i in range(40)]
    n_threads = 8
    start = threading.Barrier(n_threads)

    def worker(t: int) -> Callable[[], None]:
        rng = random.Random(100 + t)

        def run() -> None:
            start.wait(JOIN_TIMEOUT)
            for _ in range(1_000):
                key = rng.choice(keys)
                value = c.get_or_set(key, functools.partial(tuple, ("v", key)))
                assert value == ("v", key)
                assert len(c) <= 4

        return run

    no_errors(run_threads([worker(t) for t in range(n_threads)]))
    assert len(c) <= 4


# --- single flight -------------------------------------------------------------------------------


def test_single_flight_calls_the_factory_once(backend: str) -> None:
    c = make(backend)
    n = 16
    calls = 0
    lock = threading.Lock()
    value = object()
    start = threading.Barrier(n)

    def factory() -> object:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.1)
        return value

    def caller() -> object:
        start.wait(JOIN_TIMEOUT)
        return c.get_or_set("k", factory)

    results = run_threads([caller] * n)
    no_errors(results)
    assert calls == 1
    assert all(r is value for r in results)
    assert c.get("k") is value


def test_single_flight_with_a_none_value(backend: str) -> None:
    c = make(backend)
    n = 16
    calls = 0
    lock = threading.Lock()
    start = threading.Barrier(n)

    def factory() -> None:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.1)

    def caller() -> object:
        start.wait(JOIN_TIMEOUT)
        return c.get_or_set("k", factory)

    results = run_threads([caller] * n)
    no_errors(results)
    assert results == [None] * n
    assert calls == 1
    assert "k" in c
    assert c.get_or_set("k", factory) is None
    assert calls == 1


class LoadFailed(Exception):
    pass


def test_factory_exception_reaches_every_waiter(backend: str) -> None:
    c = make(backend)
    n = 16
    calls = 0
    lock = threading.Lock()
    start = threading.Barrier(n)

    def failing() -> object:
        nonlocal calls
        with lock:
            calls += 1
        # Long enough for every thread released by the barrier to be waiting on this load.
        time.sleep(0.5)
        raise LoadFailed("backend down")

    def caller() -> object:
        start.wait(JOIN_TIMEOUT)
        return c.get_or_set("k", failing)

    results = run_threads([caller] * n)
    assert calls == 1
    assert all(isinstance(r, LoadFailed) for r in results), results
    assert all(str(r) == "backend down" for r in results)
    assert "k" not in c
    assert len(c) == 0

    value = object()

    def loader() -> object:
        nonlocal calls
        calls += 1
        return value

    assert c.get_or_set("k", loader) is value
    assert calls == 2
    assert c.get("k") is value


def test_interrupted_loader_hands_over_to_a_waiter(backend: str) -> None:
    # KeyboardInterrupt (or SystemExit) in the loading thread's factory is an interruption, not
    # a failure: a waiting thread becomes the loader and every waiter gets its value.
    c = make(backend)
    n_waiters = 6
    calls = 0
    lock = threading.Lock()
    loading = threading.Event()
    value = object()

    def factory() -> object:
        nonlocal calls
        with lock:
            calls += 1
            first = calls == 1
        if first:
            loading.set()
            time.sleep(0.3)  # long enough for every waiter to be waiting
            raise KeyboardInterrupt
        return value

    def loader() -> object:
        return c.get_or_set("k", factory)

    def waiter() -> object:
        assert loading.wait(JOIN_TIMEOUT)
        return c.get_or_set("k", factory)

    results = run_threads([loader] + [waiter] * n_waiters)
    assert isinstance(results[0], KeyboardInterrupt)
    assert calls == 2
    assert all(r is value for r in results[1:]), results
    assert c.get("k") is value


def test_interrupted_loader_caches_nothing(backend: str) -> None:
    c = make(backend)

    def interrupted() -> object:
        raise KeyboardInterrupt

    def call() -> object:
        with pytest.raises(KeyboardInterrupt):
            c.get_or_set("k", interrupted)
        return None

    run_guarded(call)
    assert "k" not in c
    assert run_guarded(lambda: c.get_or_set("k", lambda: "v")) == "v"


def test_factory_reentering_its_key_raises_cache_error(backend: str) -> None:
    c = make(backend)
    c.set("other", 1)

    def factory() -> object:
        return c.get_or_set("k", lambda: "inner")

    def call() -> object:
        with pytest.raises(CacheError):
            c.get_or_set("k", factory)
        return None

    run_guarded(call)
    assert "k" not in c
    assert c.get("k") is None
    assert c.get_or_set("k", lambda: "fresh") == "fresh"
    assert c.get("other") == 1
    assert len(c) == 2


def test_factory_that_catches_reentrance_error_still_loads(backend: str) -> None:
    c = make(backend)
    inner_errors: list[BaseException] = []

    def factory() -> str:
        try:
            c.get_or_set("k", lambda: "inner")
        except CacheError as exc:
            inner_errors.append(exc)
        return "outer"

    assert run_guarded(lambda: c.get_or_set("k", factory)) == "outer"
    assert len(inner_errors) == 1
    assert c.get("k") == "outer"


def test_factory_may_load_another_key(backend: str) -> None:
    c = make(backend)

    def outer() -> tuple[str, object]:
        return ("outer", c.get_or_set("inner", lambda: "inner-value"))

    assert run_guarded(lambda: c.get_or_set("outer", outer)) == ("outer", "inner-value")
    assert c.get("inner") == "inner-value"
    assert c.get("outer") == ("outer", "inner-value")


def test_different_keys_load_in_parallel(backend: str) -> None:
    # Every factory waits until all of them are running at once: if loads of different keys
    # were serialised (a global lock, or the GIL held while waiting), the barrier would break.
    c = make(backend)
    n = 8
    inside = threading.Barrier(n)

    def loader(i: int) -> Callable[[], object]:
        def factory() -> str:
            inside.wait(10.0)
            return f"v{i}"

        return lambda: c.get_or_set(f"k{i}", factory)

    results = run_threads([loader(i) for i in range(n)])
    no_errors(results)
    assert results == [f"v{i}" for i in range(n)]
    assert sorted(c.keys()) == sorted(f"k{i}" for i in range(n))


def test_other_operations_proceed_during_a_slow_load(backend: str) -> None:
    c = make(backend)
    c.set("ready", 1)
    loading = threading.Event()
    release = threading.Event()

    def slow() -> str:
        loading.set()
        assert release.wait(JOIN_TIMEOUT)
        return "slow"

    def other_ops() -> object:
        assert loading.wait(JOIN_TIMEOUT)
        try:
            c.set("x", 2)
            return (c.get("ready"), c.get("x"), c.delete("x"), len(c) >= 1)
        finally:
            release.set()

    results = run_threads([lambda: c.get_or_set("slow", slow), other_ops])
    no_errors(results)
    assert results == ["slow", (1, 2, True, True)]


# --- __del__ calling back into the cache ---------------------------------------------------------


class Reentrant:
    """A value whose finalizer uses the cache that held it."""

    def __init__(self, cache: Cache, n: int, log: list[int], errors: list[BaseException]) -> None:
        self.cache = cache
        self.n = n
        self.log = log
        self.errors = errors

    def __del__(self) -> None:
        try:
            self.cache.get(f"obj{self.n}")
            self.cache.get("probe")
            _ = "probe" in self.cache
            self.cache.set("probe", self.n)
            _ = len(self.cache)
            self.log.append(self.n)
        except BaseException as exc:
            self.errors.append(exc)


def _overwrite(c: Cache) -> None:
    for i in range(4):
        c.set(f"obj{i}", "plain")


def _delete(c: Cache) -> None:
    for i in range(4):
        assert c.delete(f"obj{i}") is True


def _delete_prefix(c: Cache) -> None:
    assert c.delete_prefix("obj") == 4


def _clear(c: Cache) -> None:
    c.clear()


def _evict(c: Cache) -> None:
    for i in range(16):
        c.set(f"new{i}", i)


def _get_or_set_evicts(c: Cache) -> None:
    for i in range(16):
        c.get_or_set(f"loaded{i}", functools.partial(int, i))


def _expire(c: Cache) -> None:
    time.sleep(0.2)
    for i in range(4):
        assert c.get(f"obj{i}") is None


DEL_OPS: dict[str, Callable[[Cache], None]] = {
    "overwrite": _overwrite,
    "delete": _delete,
    "delete_prefix": _delete_prefix,
    "clear": _clear,
    "evict": _evict,
    "get_or_set_evicts": _get_or_set_evicts,
    "expire": _expire,
}


@pytest.mark.parametrize("op", list(DEL_OPS), ids=list(DEL_OPS))
def test_finalizer_calling_back_into_the_cache_does_not_deadlock(backend: str, op: str) -> None:
    max_size = 8
    c = make(backend, max_size=max_size, ttl=None)
    log: list[int] = []
    errors: list[BaseException] = []
    c.set("probe", -1)
    ttl = 0.05 if op == "expire" else None
    for i in range(4):
        c.set(f"obj{i}", Reentrant(c, i, log, errors), ttl=ttl)

    def act() -> None:
        DEL_OPS[op](c)
        # A native cache may drop references while the GIL is released; the next call applies
        # them (and so runs the finalizers) while attached.
        c.get("__unrelated__")
        gc.collect()

    run_guarded(act)
    assert errors == [], f"finalizers failed: {errors!r}"
    assert sorted(log) == [0, 1, 2, 3]
    assert len(c) <= max_size
    # Still usable, and consistent.
    run_guarded(lambda: c.set("after", "ok"))
    assert c.get("after") == "ok"
    assert len(c.keys()) == len(c) <= max_size


def test_finalizers_during_concurrent_eviction_do_not_deadlock(backend: str) -> None:
    max_size = 16
    c = make(backend, max_size=max_size, ttl=None)
    log: list[int] = []
    errors: list[BaseException] = []
    n_threads = 4
    per_thread = 200
    start = threading.Barrier(n_threads)

    def worker(t: int) -> Callable[[], None]:
        def run() -> None:
            start.wait(JOIN_TIMEOUT)
            for i in range(per_thread):
                n = t * per_thread + i
                c.set(f"obj{n}", Reentrant(c, n, log, errors))

        return run

    no_errors(run_threads([worker(t) for t in range(n_threads)]))
    run_guarded(c.clear)
    c.get("__unrelated__")
    gc.collect()
    assert errors == [], f"finalizers failed: {errors!r}"
    assert sorted(log) == list(range(n_threads * per_thread))
    assert len(c) <= max_size
