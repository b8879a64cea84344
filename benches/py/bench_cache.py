"""Cache benchmarks: ``sark_native.Cache`` side by side with dict, cachetools, cachebox, moka-py
and cashews ``mem://``, in one process, interleaved.

Workload (the issue's): 10k distinct str keys of 32 bytes, values a small int.

* get-hit: a cache sized 10k holding all 10k keys, read in a shuffled order.
* get-miss: the same cache, 10k other keys.
* set (new key): 10k new keys into a fresh, empty cache sized 10k (room for all).
* set (existing key): overwrite the 10k keys of the get-hit cache.
* set when full: a fresh cache sized 5k already holding 5k other keys, then 10k new keys: every
  insert evicts. Its ratio to "set (new key)" is the proof of O(1) eviction.

Each measurement times a loop of 10k calls of a bound method (``g = c.get; for k in keys: g(k)``)
with ``time.perf_counter_ns`` and subtracts an empty loop over the same keys timed just before it
in the same round. Every timed loop follows an untimed pass over the same keys (the same calls for
get and overwrite, the empty loop for inserts into a fresh cache), so it measures the steady state
with warm CPU caches, like criterion does; the untimed first pass of get-hit is also reported, as
"first pass" (CPU caches cold after the other implementations ran). Implementations are
interleaved within every round (the order rotates each round), rounds are repeated, and every
figure is the median with the min-max over rounds; every ratio is taken within a round, then
summarised. Cyclic GC is off while timing (collected between rounds).

Also: 1 and 2 threads doing get-hit (aggregate throughput, 2/1 ratio), and bytes per entry from
the RSS growth of filling a fresh cache with 100k entries, one subprocess per implementation.

Run through ``run.py`` (``--only cache``); ``python bench_cache.py --rss-child IMPL N`` is the
memory probe's child.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    Section,
    Settings,
    Summary,
    criterion_results,
    criterion_version,
    fmt_ns,
    fmt_ns_summary,
    fmt_ratio,
    md_table,
    package_version,
)

NAME = "cache"
TITLE = "Cache (`sark_native.Cache`)"

#: Keys per workload, and the size of the cache for get / plain set.
N = 10_000
#: Size of the cache for "set when full" (prefilled with this many other keys).
FULL_SIZE = N // 2
#: Entries for the bytes-per-entry probe.
RSS_ENTRIES = 100_000
#: Default time to live of the TTL caches, seconds: long enough that nothing expires in a run.
TTL = 3600.0
VALUE = 1

GetFn = Callable[[str], object]
SetFn = Callable[[str, object], object]
AGetFn = Callable[[str], Awaitable[object]]
ASetFn = Callable[[str, object, float], Awaitable[object]]

#: (id, column title)
OPS: tuple[tuple[str, str], ...] = (
    ("get_hit", "get-hit"),
    ("get_hit_fresh", "get-hit, keys built per request"),
    ("get_miss", "get-miss"),
    ("set_new", "set (new key, room)"),
    ("set_existing", "set (existing key)"),
    ("set_full", "set when full (evicts)"),
)

PEER_DISTS = ("sark-native", "cachetools", "cachebox", "moka-py", "cashews")


@dataclass(frozen=True)
class Impl:
    """One cache implementation under test and how to call it."""

    id: str
    label: str
    #: How it is called, for the reader.
    call: str
    #: max_size -> a new, empty cache.
    make: Callable[[int], Any]
    #: cache -> its bound get (a coroutine function for async implementations).
    getter: Callable[[Any], Any]
    #: cache -> its bound set; async ones are called as ``await s(key, value, TTL)``.
    setter: Callable[[Any], Any]
    evicts: bool = True
    is_async: bool = False
    ours: bool = False
    #: False: needs a lock around every call when shared by threads (cachetools).
    thread_safe: bool = True
    #: cache -> number of entries held.
    size: Callable[[Any], int] = len
    #: Run after filling (moka applies inserts in batches).
    settle: Callable[[Any], None] | None = None
    note: str = ""


def _moka_size(c: Any) -> int:
    c.run_pending_tasks()
    return int(c.count())


def _moka_settle(c: Any) -> None:
    c.run_pending_tasks()


def _cashews_size(c: Any) -> int:
    backend = next(iter(c._backends.values()))  # cashews.Cache keeps {prefix: backend}
    store = getattr(backend, "store", None)  # mem://: an OrderedDict
    if store is None:
        store = getattr(backend, "_cache", None)  # sark://: a sark_native.Cache
    return len(store) if store is not None else -1


def implementations() -> tuple[list[Impl], list[str]]:
    """The implementations to run, and notes about the ones that could not be loaded."""
    missing: list[str] = []
    impls: list[Impl] = []

    from sark_native import RUST_AVAILABLE, Cache

    if RUST_AVAILABLE:
        impls.append(
            Impl(
                "sark_rust",
                'sark_native.Cache(backend="rust")',
                "c.get(k) / c.set(k, v)",
                lambda n: Cache(n, TTL, backend="rust", name="bench"),
                lambda c: c.get,
                lambda c: c.set,
                ours=True,
            )
        )
    else:
        missing.append('sark_native.Cache(backend="rust"): the extension is not loaded')
    impls.append(
        Impl(
            "sark_python",
            'sark_native.Cache(backend="python")',
            "c.get(k) / c.set(k, v)",
            lambda n: Cache(n, TTL, backend="python", name="bench"),
            lambda c: c.get,
            lambda c: c.set,
            ours=True,
        )
    )
    impls.append(
        Impl(
            "dict",
            "dict (no bound, no TTL: the floor)",
            "d.get(k) / d.__setitem__(k, v)",
            lambda n: {},
            lambda c: c.get,
            lambda c: c.__setitem__,
            evicts=False,
        )
    )
    try:
        import cachetools

        impls.append(
            Impl(
                "cachetools_ttl",
                "cachetools.TTLCache",
                "c.get(k) / c.__setitem__(k, v)",
                lambda n: cachetools.TTLCache(maxsize=n, ttl=TTL),
                lambda c: c.get,
                lambda c: c.__setitem__,
                thread_safe=False,
            )
        )
        impls.append(
            Impl(
                "cachetools_lru",
                "cachetools.LRUCache",
                "c.get(k) / c.__setitem__(k, v)",
                lambda n: cachetools.LRUCache(maxsize=n),
                lambda c: c.get,
                lambda c: c.__setitem__,
                thread_safe=False,
                note="no TTL",
            )
        )
    except ImportError:
        missing.append("cachetools: not installed")
    try:
        import cachebox

        impls.append(
            Impl(
                "cachebox_lru",
                "cachebox.LRUCache",
                "c.get(k) / c.insert(k, v)",
                lambda n: cachebox.LRUCache(n),
                lambda c: c.get,
                lambda c: c.insert,
                note="no TTL",
            )
        )
        if hasattr(cachebox, "TTLCache"):
            impls.append(
                Impl(
                    "cachebox_ttl",
                    "cachebox.TTLCache",
                    "c.get(k) / c.insert(k, v)",
                    lambda n: cachebox.TTLCache(n, global_ttl=TTL),
                    lambda c: c.get,
                    lambda c: c.insert,
                    note="FIFO order + one global TTL (not LRU)",
                )
            )
    except ImportError:
        missing.append("cachebox: not installed")
    try:
        import moka_py

        impls.append(
            Impl(
                "moka",
                'moka_py.Moka(policy="lru")',
                "c.get(k) / c.set(k, v)",
                lambda n: moka_py.Moka(n, ttl=TTL, policy="lru"),
                lambda c: c.get,
                lambda c: c.set,
                size=_moka_size,
                settle=_moka_settle,
                note=(
                    'policy "lru" to match the others (default "tiny_lfu" may refuse new keys); '
                    "applies writes in batches, so some eviction work may land after a timed loop"
                ),
            )
        )
    except ImportError:
        missing.append("moka-py: not installed")
    try:
        import cashews

        def make_cashews(url: str) -> Callable[[int], Any]:
            def make(n: int) -> Any:
                c = cashews.Cache(name="bench")
                c.setup(url.format(n=n))
                return c

            return make

        impls.append(
            Impl(
                "cashews_mem",
                "cashews `mem://` (async)",
                "await c.get(k) / await c.set(k, v, ttl)",
                make_cashews("mem://?size={n}&check_interval=0"),
                lambda c: c.get,
                lambda c: c.set,
                is_async=True,
                size=_cashews_size,
                note="async: awaited in a loop inside one running event loop",
            )
        )
        try:
            import sark_native.contrib.cashews  # noqa: F401  (registers sark://)

            impls.append(
                Impl(
                    "cashews_sark",
                    "cashews `sark://` (async; our Cache behind cashews)",
                    "await c.get(k) / await c.set(k, v, ttl)",
                    make_cashews("sark://?max_size={n}"),
                    lambda c: c.get,
                    lambda c: c.set,
                    is_async=True,
                    ours=True,
                    size=_cashews_size,
                    note="what a cashews app gets from swapping mem:// for sark://",
                )
            )
        except ImportError as exc:
            missing.append(f"sark_native.contrib.cashews: {exc}")
    except ImportError:
        missing.append("cashews: not installed")
    return impls, missing


# --- timed loops ------------------------------------------------------------------------------


def loop_empty(keys: list[str]) -> int:
    t0 = time.perf_counter_ns()
    for _k in keys:
        pass
    return time.perf_counter_ns() - t0


def loop_get(g: GetFn, keys: list[str]) -> int:
    t0 = time.perf_counter_ns()
    for k in keys:
        g(k)
    return time.perf_counter_ns() - t0


def loop_set(s: SetFn, keys: list[str], value: object) -> int:
    t0 = time.perf_counter_ns()
    for k in keys:
        s(k, value)
    return time.perf_counter_ns() - t0


async def aloop_empty(keys: list[str]) -> int:
    t0 = time.perf_counter_ns()
    for _k in keys:
        pass
    return time.perf_counter_ns() - t0


async def aloop_get(g: AGetFn, keys: list[str]) -> int:
    t0 = time.perf_counter_ns()
    for k in keys:
        await g(k)
    return time.perf_counter_ns() - t0


async def aloop_set(s: ASetFn, keys: list[str], value: object) -> int:
    t0 = time.perf_counter_ns()
    for k in keys:
        await s(k, value, TTL)
    return time.perf_counter_ns() - t0


async def afill(s: ASetFn, keys: list[str], value: object) -> None:
    for k in keys:
        await s(k, value, TTL)


# --- the harness ------------------------------------------------------------------------------


@dataclass
class Keys:
    """The key sets, distinct from one another, all 32-character ASCII str."""

    hit: list[str]
    #: ``hit`` in another (shuffled) order: reads do not follow insertion order.
    hit_reads: list[str]
    miss: list[str]
    new: list[str]
    prefill: list[str]

    @classmethod
    def make(cls, seed: int = 20240601) -> Keys:
        rng = random.Random(seed)
        seen: set[str] = set()

        def batch(n: int) -> list[str]:
            out: list[str] = []
            while len(out) < n:
                k = rng.randbytes(16).hex()
                if k not in seen:
                    seen.add(k)
                    out.append(k)
            return out

        hit = batch(N)
        hit_reads = hit[:]
        rng.shuffle(hit_reads)
        return cls(hit, hit_reads, batch(N), batch(N), batch(FULL_SIZE))


class Runner:
    """Runs the sync and async implementations with the same loop shapes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def fill(self, impl: Impl, cache: Any, keys: list[str]) -> None:
        s = impl.setter(cache)
        if impl.is_async:
            self.loop.run_until_complete(afill(s, keys, VALUE))
        else:
            for k in keys:
                s(k, VALUE)
        if impl.settle is not None:
            impl.settle(cache)

    def empty(self, is_async: bool, keys: list[str]) -> int:
        if is_async:
            return self.loop.run_until_complete(aloop_empty(keys))
        return loop_empty(keys)

    def get(self, impl: Impl, cache: Any, keys: list[str]) -> int:
        g = impl.getter(cache)
        if impl.is_async:
            return self.loop.run_until_complete(aloop_get(g, keys))
        return loop_get(g, keys)

    def set(self, impl: Impl, cache: Any, keys: list[str]) -> int:
        s = impl.setter(cache)
        if impl.is_async:
            return self.loop.run_until_complete(aloop_set(s, keys, VALUE))
        return loop_set(s, keys, VALUE)


@dataclass
class OpResults:
    """Net ns/op per (op, impl id), one value per timed round."""

    per_op: dict[tuple[str, str], list[float]]

    def values(self, op: str, impl_id: str) -> list[float]:
        return self.per_op.get((op, impl_id), [])

    def summary(self, op: str, impl_id: str) -> Summary | None:
        v = self.values(op, impl_id)
        return Summary.of(v) if v else None

    def ratio(self, op_a: str, a: str, op_b: str, b: str) -> Summary | None:
        """(op_a, a) / (op_b, b), round by round."""
        va, vb = self.values(op_a, a), self.values(op_b, b)
        pairs = [x / y for x, y in zip(va, vb, strict=False) if y > 0]
        return Summary.of(pairs) if pairs else None


def _fresh(keys: list[str]) -> list[str]:
    """New str objects equal to ``keys``, with no cached hash."""
    return [k.encode().decode() for k in keys]


def run_ops(settings: Settings, impls: list[Impl], keys: Keys, runner: Runner) -> OpResults:
    """Every op, every implementation, interleaved within each round."""
    # Long-lived caches for get-hit, get-miss and set (existing key).
    filled: dict[str, Any] = {}
    for impl in impls:
        c = impl.make(N)
        runner.fill(impl, c, keys.hit)
        held = impl.size(c)
        if held != N:
            settings.log(f"  note: {impl.label} holds {held} of {N} keys after the fill")
        filled[impl.id] = c

    per_op: dict[tuple[str, str], list[float]] = {}
    rounds = settings.warmup_rounds + settings.repeats
    gc.collect()
    gc.disable()
    try:
        for rnd in range(rounds):
            timed = rnd >= settings.warmup_rounds
            shift = rnd % len(impls)
            order = impls[shift:] + impls[:shift]
            t_round = time.perf_counter()
            for op, _title in OPS:
                op_keys = {
                    "get_hit": keys.hit_reads,
                    "get_hit_fresh": keys.hit_reads,
                    "get_miss": keys.miss,
                    "set_new": keys.new,
                    "set_existing": keys.hit_reads,
                    "set_full": keys.new,
                }[op]
                for impl in order:
                    if op == "set_full" and not impl.evicts:
                        continue
                    first: int | None = None
                    if op == "get_hit_fresh":
                        # Equal but new str objects, as a request handler builds them: their
                        # hash is not computed yet (the copies are made outside the timing).
                        cache = filled[impl.id]
                        runner.get(impl, cache, _fresh(op_keys))  # warms the CPU caches
                        copies = _fresh(op_keys)
                        base = runner.empty(impl.is_async, copies)
                        raw = runner.get(impl, cache, copies)
                        del copies
                    elif op in ("get_hit", "get_miss"):
                        cache = filled[impl.id]
                        first = runner.get(impl, cache, op_keys)  # warms the CPU caches
                        base = runner.empty(impl.is_async, op_keys)
                        raw = runner.get(impl, cache, op_keys)
                    elif op == "set_existing":
                        cache = filled[impl.id]
                        runner.set(impl, cache, op_keys)  # warms the CPU caches
                        base = runner.empty(impl.is_async, op_keys)
                        raw = runner.set(impl, cache, op_keys)
                    else:
                        fresh = impl.make(N if op == "set_new" else FULL_SIZE)
                        if op == "set_full":
                            runner.fill(impl, fresh, keys.prefill)
                        runner.empty(impl.is_async, op_keys)  # warms the keys
                        base = runner.empty(impl.is_async, op_keys)
                        raw = runner.set(impl, fresh, op_keys)
                        if impl.settle is not None:
                            impl.settle(fresh)
                        if op == "set_full" and rnd == 0:
                            held = impl.size(fresh)
                            if held > FULL_SIZE:
                                settings.log(
                                    f"  note: {impl.label} holds {held} > {FULL_SIZE} when full"
                                )
                        del fresh
                    if timed:
                        n = len(op_keys)
                        per_op.setdefault((op, impl.id), []).append((raw - base) / n)
                        if first is not None:
                            cold = (first - base) / n
                            per_op.setdefault((op + "_first", impl.id), []).append(cold)
            gc.enable()
            gc.collect()
            gc.disable()
            label = "warm-up" if not timed else f"round {rnd - settings.warmup_rounds + 1}"
            settings.log(
                f"  cache ops {label}/{settings.repeats}: {time.perf_counter() - t_round:.2f} s"
            )
    finally:
        gc.enable()
    filled.clear()
    gc.collect()
    return OpResults(per_op)


# --- threads ----------------------------------------------------------------------------------


def _locked(g: GetFn, lock: threading.Lock) -> GetFn:
    def get(k: str) -> object:
        with lock:
            return g(k)

    return get


def threaded_get_hit(g: GetFn, keys: list[str], threads: int, passes: int) -> int:
    """Wall ns for ``threads`` threads each doing ``passes`` loops of get over the keys."""
    ready = threading.Barrier(threads + 1)
    go = threading.Event()
    lists = [
        keys[i * len(keys) // threads :] + keys[: i * len(keys) // threads] for i in range(threads)
    ]

    def work(ks: list[str]) -> None:
        ready.wait()
        go.wait()
        for _ in range(passes):
            for k in ks:
                g(k)

    workers = [threading.Thread(target=work, args=(ks,)) for ks in lists]
    for w in workers:
        w.start()
    ready.wait()
    t0 = time.perf_counter_ns()
    go.set()
    for w in workers:
        w.join()
    return time.perf_counter_ns() - t0


@dataclass
class ThreadResult:
    impl: Impl
    #: Aggregate ops/s per round, by thread count.
    throughput: dict[int, list[float]]
    scaling: list[float]


def run_threads(
    settings: Settings, impls: list[Impl], keys: Keys, runner: Runner, get_hit_ns: dict[str, float]
) -> list[ThreadResult]:
    """1 and 2 threads doing get-hit on one shared cache per implementation, interleaved.

    Each thread makes enough passes over the keys to run ~40 ms (10 ms with ``--quick``), judged
    from the single-thread get-hit time, so scheduler noise stays small against the run.
    """
    sync = [i for i in impls if not i.is_async]
    target_ns = 10e6 if settings.quick else 40e6
    passes = {
        i.id: max(2, min(100, math.ceil(target_ns / (max(get_hit_ns.get(i.id, 1000.0), 1.0) * N))))
        for i in sync
    }
    repeats = max(2, settings.repeats // 2)
    caches: dict[str, GetFn] = {}
    for impl in sync:
        c = impl.make(N)
        runner.fill(impl, c, keys.hit)
        g: GetFn = impl.getter(c)
        caches[impl.id] = g if impl.thread_safe else _locked(g, threading.Lock())
    results = {i.id: ThreadResult(i, {1: [], 2: []}, []) for i in sync}
    gc.collect()
    gc.disable()
    try:
        for rnd in range(repeats + 1):
            shift = rnd % len(sync)
            for impl in sync[shift:] + sync[:shift]:
                tp: dict[int, float] = {}
                for threads in (1, 2) if rnd % 2 == 0 else (2, 1):
                    p = passes[impl.id]
                    ns = threaded_get_hit(caches[impl.id], keys.hit_reads, threads, p)
                    tp[threads] = threads * p * len(keys.hit_reads) / ns * 1e9
                if rnd > 0:  # the first round warms up
                    r = results[impl.id]
                    r.throughput[1].append(tp[1])
                    r.throughput[2].append(tp[2])
                    r.scaling.append(tp[2] / tp[1])
            gc.enable()
            gc.collect()
            gc.disable()
    finally:
        gc.enable()
    return [results[i.id] for i in sync]


# --- bytes per entry --------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size now, from /proc/self/statm (falls back to the peak from getrusage)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_child(impl_id: str, n: int) -> dict[str, Any]:
    """In a fresh process: fill a new cache with ``n`` entries, report the RSS growth.

    Keys are built on the fly (``f"{i:032x}"``, 32 bytes) and referenced by nothing but the cache,
    so an implementation that keeps the str object pays for it and one that copies the bytes
    pays for its copy. Values are small ints (shared objects, no allocation).
    """
    impls, _missing = implementations()
    impl = next(i for i in impls if i.id == impl_id)
    loop = asyncio.new_event_loop() if impl.is_async else None
    gc.collect()
    before = rss_bytes()
    cache = impl.make(n)
    s = impl.setter(cache)
    if loop is not None:

        async def fill() -> None:
            for i in range(n):
                await s(f"{i:032x}", i & 0xFF, TTL)

        loop.run_until_complete(fill())
    else:
        for i in range(n):
            s(f"{i:032x}", i & 0xFF)
    if impl.settle is not None:
        impl.settle(cache)
    gc.collect()
    after = rss_bytes()
    held = impl.size(cache)
    out: dict[str, Any] = {
        "impl": impl_id,
        "entries": held,
        "rss_growth": after - before,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    heap = getattr(cache, "_heap_bytes", None)
    if impl_id == "sark_rust" and callable(heap):
        out["heap_bytes"] = int(heap())
    if loop is not None:
        loop.close()
    return out


@dataclass
class MemResult:
    impl: Impl
    entries: int
    rss_growth: int
    heap_bytes: int | None
    error: str | None = None

    @property
    def per_entry(self) -> float:
        return self.rss_growth / self.entries if self.entries > 0 else float("nan")


def run_memory(settings: Settings, impls: list[Impl]) -> list[MemResult]:
    n = 20_000 if settings.quick else RSS_ENTRIES
    out: list[MemResult] = []
    for impl in impls:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", impl.id, str(n)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            out.append(MemResult(impl, 0, 0, None, "timed out"))
            continue
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["?"]
            out.append(MemResult(impl, 0, 0, None, f"failed: {tail[0]}"))
            continue
        data = json.loads(done.stdout.strip().splitlines()[-1])
        out.append(
            MemResult(impl, int(data["entries"]), int(data["rss_growth"]), data.get("heap_bytes"))
        )
        settings.log(f"  memory {impl.label}: {out[-1].per_entry:.0f} B/entry")
    return out


# --- report -----------------------------------------------------------------------------------


def _cell(s: Summary | None) -> str:
    return fmt_ns_summary(s) if s is not None else "n/a"


def _ratio_cell(s: Summary | None) -> str:
    return fmt_ratio(s) if s is not None else "n/a"


def _verdict(s: Summary | None, limit: float, higher_is_better: bool) -> str:
    if s is None:
        return "not measured"

    def ok(x: float) -> bool:
        return x >= limit if higher_is_better else x <= limit

    if ok(s.median):
        if ok(s.low) and ok(s.high):
            return "**met**"
        return "**met** (median; the range crosses the limit)"
    if ok(s.low) or ok(s.high):
        return "**not met** (median; part of the range meets it)"
    return "**not met**"


def _label(impl: Impl) -> str:
    return f"**{impl.label}**" if impl.ours else impl.label


def report(
    settings: Settings,
    impls: list[Impl],
    missing: list[str],
    ops: OpResults,
    threads: list[ThreadResult],
    memory: list[MemResult],
) -> str:
    by_id = {i.id: i for i in impls}
    dict_id = "dict" if "dict" in by_id else None
    ttl_id = "cachetools_ttl" if "cachetools_ttl" in by_id else None
    parts: list[str] = []

    parts.append(
        f"Workload: {N:,} distinct str keys of 32 bytes, small int values; caches sized {N:,} "
        f"(get, plain set) or {FULL_SIZE:,} and full (set when full: {N:,} new keys, each insert "
        f"evicts); TTL caches get a {TTL:.0f} s default TTL; reads go in a shuffled order, not "
        f"the insertion order. Times are **ns per operation**, median (min-max) over "
        f"{settings.repeats} rounds in which every implementation ran interleaved (order rotated "
        f"each round), each a loop of {N:,} calls of a bound method minus an empty loop over the "
        "same keys timed just before it. Each timed loop follows an untimed pass over the same "
        "keys, so these are steady-state figures with warm CPU caches; cyclic GC is off while "
        "timing. Ratios are taken within a round, then summarised the same way. Ours in **bold**."
    )
    if missing:
        parts.append("Not run: " + "; ".join(missing) + ".")

    impl_rows = [[_label(i), f"`{i.call}`", i.note or ""] for i in impls]
    parts.append(
        "### Implementations\n\n" + md_table(["implementation", "calls timed", "note"], impl_rows)
    )

    # get-hit
    rows = []
    for i in impls:
        vs_dict = ops.ratio("get_hit", i.id, "get_hit", dict_id) if dict_id else None
        speedup = ops.ratio("get_hit", ttl_id, "get_hit", i.id) if ttl_id else None
        rows.append(
            [
                _label(i),
                _cell(ops.summary("get_hit", i.id)),
                _ratio_cell(vs_dict),
                _ratio_cell(speedup),
                _cell(ops.summary("get_hit_first", i.id)),
            ]
        )
    parts.append(
        "### get-hit\n\n"
        + md_table(
            [
                "implementation",
                "ns/op",
                "÷ dict get (lower is better)",
                "cachetools TTLCache ÷ this (speed-up)",
                "first pass, CPU caches cold: ns/op",
            ],
            rows,
        )
        + "\n\nThe last column is the untimed pass that precedes each timed one: the first "
        "10k reads after the other implementations ran, with the CPU caches cold (minus the "
        "warm empty loop). It depends on how many cache lines a hit touches and on the machine, "
        "so it is shown, not used for ratios."
    )

    # get-hit with fresh key objects
    rows = []
    for i in impls:
        vs_dict = ops.ratio("get_hit_fresh", i.id, "get_hit_fresh", dict_id) if dict_id else None
        rows.append([_label(i), _cell(ops.summary("get_hit_fresh", i.id)), _ratio_cell(vs_dict)])
    parts.append(
        "### get-hit, keys built per request\n\n"
        + md_table(["implementation", "ns/op", "÷ dict get of the same fresh keys"], rows)
        + "\n\nThe same hits, but each read gets a new str object equal to the stored key, as a "
        'handler gets from `f"user:{uid}"` or a request header: its hash has never been '
        "computed. The get-hit table above reuses the key objects, whose hash CPython caches "
        "inside the str after the first use, which favours implementations that key on Python's "
        "`hash()` (dict, cachetools, cachebox); ours hashes the key's UTF-8 bytes with foldhash, "
        "so a cached hash gains it nothing and an uncached one costs it nothing extra."
    )

    # get-miss
    rows = []
    for i in impls:
        vs_dict = ops.ratio("get_miss", i.id, "get_miss", dict_id) if dict_id else None
        rows.append([_label(i), _cell(ops.summary("get_miss", i.id)), _ratio_cell(vs_dict)])
    parts.append(
        "### get-miss\n\n" + md_table(["implementation", "ns/op", "÷ dict get-miss"], rows)
    )

    # set
    rows = []
    for i in impls:
        rows.append(
            [
                _label(i),
                _cell(ops.summary("set_new", i.id)),
                _ratio_cell(ops.ratio("set_new", i.id, "set_new", dict_id) if dict_id else None),
                _cell(ops.summary("set_existing", i.id)),
                _ratio_cell(
                    ops.ratio("set_existing", i.id, "set_existing", dict_id) if dict_id else None
                ),
            ]
        )
    parts.append(
        "### set (plain: new key into a cache with room; existing key: overwrite)\n\n"
        + md_table(
            ["implementation", "new key ns/op", "÷ dict", "existing key ns/op", "÷ dict"],
            rows,
        )
    )

    # set when full
    rows = []
    for i in impls:
        if not i.evicts:
            rows.append([_label(i), "n/a (unbounded)", "n/a", "n/a"])
            continue
        rows.append(
            [
                _label(i),
                _cell(ops.summary("set_full", i.id)),
                _ratio_cell(ops.ratio("set_full", i.id, "set_new", i.id)),
                _ratio_cell(ops.ratio("set_full", i.id, "set_full", ttl_id) if ttl_id else None),
            ]
        )
    parts.append(
        "### set when full (every insert evicts)\n\n"
        "The plain set it is compared with fills an empty cache, so it includes growing the "
        "cache's tables; a full cache reuses the evicted entry's slot, which is why a ratio can "
        "come out below 1.\n\n"
        + md_table(
            [
                "implementation",
                "ns/op",
                "÷ its own plain set (O(1) eviction: ~1x)",
                "÷ cachetools TTLCache",
            ],
            rows,
        )
    )

    # targets
    parts.append(_targets(ops, impls, memory, dict_id, ttl_id))

    # threads
    if threads:
        rows = []
        for t in threads:
            one, two = Summary.of(t.throughput[1]), Summary.of(t.throughput[2])
            rows.append(
                [
                    _label(t.impl) + ("" if t.impl.thread_safe else " (+ `threading.Lock`)"),
                    f"{one.median / 1e6:.2f} ({one.low / 1e6:.2f}-{one.high / 1e6:.2f})",
                    f"{two.median / 1e6:.2f} ({two.low / 1e6:.2f}-{two.high / 1e6:.2f})",
                    fmt_ratio(Summary.of(t.scaling)),
                    fmt_ns(1e9 / one.median),
                ]
            )
        parts.append(
            "### get-hit from 1 and 2 threads\n\n"
            "Each thread loops over the 10k keys (from its own offset) on one shared cache, "
            "enough passes to run ~40 ms; aggregate throughput in millions of gets per second "
            "(loop overhead included), median (min-max). cachetools is not thread-safe, so its "
            "calls take a `threading.Lock`, as an app sharing it must. The GIL serialises the "
            "Python-level work, so ~1x (or a bit less, from handing the GIL over) is what a user "
            "sees for most of these; async implementations are not in this table.\n\n"
            + md_table(
                [
                    "implementation",
                    "1 thread Mops/s",
                    "2 threads Mops/s",
                    "2 / 1",
                    "1-thread ns/op (wall)",
                ],
                rows,
            )
        )

    # memory
    if memory:
        rows = []
        heap_line = ""
        for m in memory:
            if m.error:
                rows.append([_label(m.impl), m.error, "", ""])
                continue
            rows.append(
                [
                    _label(m.impl),
                    f"{m.per_entry:.0f}",
                    f"{m.entries:,}",
                    f"{m.rss_growth / 2**20:.1f} MiB",
                ]
            )
            if m.heap_bytes is not None and m.entries:
                per = m.heap_bytes / m.entries
                heap_line = (
                    f'`Cache(backend="rust")._heap_bytes() / len` = {per:.0f} B/entry '
                    f"({m.heap_bytes / 2**20:.1f} MiB for {m.entries:,}): the Rust side's own "
                    "estimate of its structures (nodes, table, key copies), without the Python "
                    "value objects and without malloc's overhead."
                )
        parts.append(
            "### Bytes per entry\n\n"
            "RSS growth of filling a fresh cache (sized to fit) in a fresh subprocess per "
            "implementation, divided by the entries held. tracemalloc cannot see Rust "
            "allocations, so this is RSS (page granularity; allocator slack included). Keys are "
            'built on the fly (`f"{i:032x}"`) and referenced only by the cache: implementations '
            "that keep the `str` pay for its ~81 B object, ours copies the 32 key bytes into Rust. "
            "Values are small ints (shared, not allocated).\n\n"
            + md_table(["implementation", "bytes/entry", "entries", "RSS growth"], rows)
            + ("\n\n" + heap_line if heap_line else "")
        )

    parts.append(_criterion_section())
    return "\n\n".join(parts)


def _targets(
    ops: OpResults,
    impls: list[Impl],
    memory: list[MemResult],
    dict_id: str | None,
    ttl_id: str | None,
) -> str:
    ids = [i for i in ("sark_rust", "sark_python") if any(x.id == i for x in impls)]
    header = ["target (from the issue)"]
    for i in ids:
        header += [f"{'Rust' if i == 'sark_rust' else 'pure-Python'} backend", "verdict"]
    rows: list[list[str]] = []

    def add(name: str, value: Callable[[str], Summary | None], limit: float, higher: bool) -> None:
        row = [name]
        for i in ids:
            s = value(i)
            row += [_ratio_cell(s), _verdict(s, limit, higher)]
        rows.append(row)

    add(
        "get-hit within 2.5x of a `dict` get",
        lambda i: ops.ratio("get_hit", i, "get_hit", dict_id) if dict_id else None,
        2.5,
        False,
    )
    add(
        "get-hit at least 10x faster than cachetools `TTLCache`",
        lambda i: ops.ratio("get_hit", ttl_id, "get_hit", i) if ttl_id else None,
        10.0,
        True,
    )
    add(
        "set when full within 1.5x of a plain set (O(1) eviction)",
        lambda i: ops.ratio("set_full", i, "set_new", i),
        1.5,
        False,
    )
    mem_row = ["report bytes per entry"]
    for i in ids:
        m = next((x for x in memory if x.impl.id == i and not x.error), None)
        mem_row += [f"{m.per_entry:.0f} B" if m else "not measured", "reported" if m else "-"]
    rows.append(mem_row)
    return (
        "### Targets\n\n"
        "The targets are the Rust backend's (the default); the pure-Python backend is shown for "
        "reference. Verdicts are on the median; the range is the min-max over rounds.\n\n"
        + md_table(header, rows)
    )


def _criterion_section() -> str:
    results = criterion_results("cache")
    head = (
        "### Rust core (criterion)\n\n"
        "`cargo bench --no-default-features --bench cache` (`make bench-rust`; criterion "
        f"{criterion_version()}): `core::cache::Cache<u64>` with no Python in the way, same "
        "key shapes. Median per operation with criterion's 95% confidence interval of the median; "
        "the `x10k` benches time 10k inserts into a fresh cache, the thread benches time every "
        "thread doing one get (aggregate throughput shown)."
    )
    if not results:
        return (
            head + "\n\nNo criterion results under `target/criterion/cache`: run `make bench-rust`."
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(r.modified for r in results)))
    rows = []
    by_name = {r.full_id.split("/", 1)[-1]: r for r in results}
    for r in results:
        e = r.elements
        rows.append(
            [
                f"`{r.full_id}`",
                fmt_ns(r.per_element_ns),
                f"{fmt_ns(r.median_low_ns / e)}-{fmt_ns(r.median_high_ns / e)}",
                f"{r.throughput_per_s / 1e6:.1f}",
            ]
        )
    derived: list[str] = []
    room, full = by_name.get("insert_room_x10k"), by_name.get("insert_full_x10k")
    if room and full:
        derived.append(
            f"insert when full ÷ insert into room: {full.median_ns / room.median_ns:.2f}x"
        )
    one, two = by_name.get("get_hit_1t"), by_name.get("get_hit_2t")
    if one and two:
        derived.append(
            f"get-hit 2 threads ÷ 1 thread, aggregate throughput: "
            f"{two.throughput_per_s / one.throughput_per_s:.2f}x"
        )
    own = by_name.get("get_hit_2t_own_cache")
    if one and own:
        derived.append(
            f"control, 2 threads each on its own cache ÷ 1 thread: "
            f"{own.throughput_per_s / one.throughput_per_s:.2f}x (what this machine allows)"
        )
    body = md_table(["bench", "median per op", "95% CI", "Mops/s"], rows)
    tail = "\n".join(f"- {d}" for d in derived)
    return f"{head}\n\nResults of the last `cargo bench` run ({stamp}):\n\n{body}" + (
        f"\n\n{tail}" if tail else ""
    )


def run(settings: Settings) -> Section:
    impls, missing = implementations()
    for m in missing:
        settings.log(f"  skipped: {m}")
    keys = Keys.make()
    loop = asyncio.new_event_loop()
    try:
        runner = Runner(loop)
        settings.log(f"cache: {len(impls)} implementations, {settings.repeats} rounds")
        ops = run_ops(settings, impls, keys, runner)
        settings.log("cache: threads")
        hit_ns = {i.id: h.median for i in impls if (h := ops.summary("get_hit", i.id)) is not None}
        threads = run_threads(settings, impls, keys, runner, hit_ns)
    finally:
        loop.close()
    settings.log("cache: bytes per entry (one subprocess each)")
    memory = run_memory(settings, impls)
    body = report(settings, impls, missing, ops, threads, memory)
    versions = {d: package_version(d) for d in PEER_DISTS}
    return Section(NAME, TITLE, body, versions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rss-child", nargs=2, metavar=("IMPL", "N"), help="memory probe (internal)"
    )
    args = parser.parse_args(argv)
    if args.rss_child:
        impl_id, n = args.rss_child
        print(json.dumps(rss_child(impl_id, int(n))))
        return 0
    parser.error("run benches/py/run.py (this module's CLI is the memory probe's child)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
