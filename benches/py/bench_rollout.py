"""Rollout benchmarks: the per-request decision and the propagation of a change.

* Per call, interleaved in one process (10k distinct user ids, one feature at 50%):
  ``FeatureFlags.is_enabled`` (a dict read and ``bucket``, no I/O), the same at 0% (no hash),
  ``bucket`` alone (native, and the ``mmh3`` twin), and what the seed's design does per request:
  a Redis ``GET feature:{name}:rollout_pct`` (redis-py, loopback, a local ``redis-server``) then
  the decision. Loops are timed with ``perf_counter_ns`` minus an empty loop over the same ids;
  medians with the min-max over rounds.
* Propagation: a second process runs ``FeatureFlags`` against the same Redis and polls its local
  snapshot every 0.2 ms; this process calls ``set_rollout`` and waits until the child reports the
  new value. Delay = child's ``monotonic_ns`` when it saw the value - ours before the call (one
  host, one monotonic clock), so it includes the MULTI/EXEC round trip and up to 0.2 ms of
  polling. p50 / p99 / max over the changes.

Run through ``run.py`` (``--only rollout``); ``python bench_rollout.py --child URL`` is the
propagation probe's child.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchlib import (
    Section,
    Settings,
    Summary,
    criterion_results,
    criterion_version,
    fmt_ns,
    fmt_ns_summary,
    md_table,
    package_version,
)

NAME = "rollout"
TITLE = "Rollout decision (`sark_native.flags`)"

N = 10_000
#: Calls per round for the Redis GET path (each is a network round trip).
N_REDIS = 2_000
FEATURE = "rust_opa"
CHILD_POLL_S = 0.0002


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port (``make redis`` provides the binary)."""
    binary = (
        os.environ.get("SARK_NATIVE_REDIS_SERVER")
        or shutil.which("redis-server")
        or str(Path(sys.executable).parent / "redis-server")
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                        c.sendall(b"PING\r\n")
                        if c.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def time_loop(fn: Callable[[str, str], object], units: list[str]) -> float:
    """ns per call of ``fn(FEATURE, unit)`` over ``units``, minus the empty loop."""
    f = FEATURE
    t0 = time.perf_counter_ns()
    for _u in units:
        pass
    empty = time.perf_counter_ns() - t0
    for u in units:  # untimed pass: warm
        fn(f, u)
    t0 = time.perf_counter_ns()
    for u in units:
        fn(f, u)
    return (time.perf_counter_ns() - t0 - empty) / len(units)


def per_call(settings: Settings, url: str) -> str:
    import redis

    from sark_native import RUST_AVAILABLE, _backend
    from sark_native._fallback.bucket import bucket as py_bucket
    from sark_native.flags import FeatureFlags

    flags_50 = FeatureFlags()
    flags_0 = FeatureFlags()
    asyncio.run(flags_50.set_rollout(FEATURE, 50))
    client = redis.Redis.from_url(url)
    client.set(f"feature:{FEATURE}:rollout_pct", 50)
    bucket = _backend.bucket_function()

    def redis_get_per_request(feature: str, unit: str) -> bool:
        raw = client.get(f"feature:{feature}:rollout_pct")
        pct = int(raw) if raw is not None else 0
        return bucket(feature, unit) < pct

    def seed_hash(feature: str, unit: str) -> bool:
        return hash(f"{feature}:{unit}") % 100 < 50

    rows: list[tuple[str, str, Callable[[str, str], object], int]] = [
        ("is_enabled, 50%", "`flags.is_enabled(f, uid)`", flags_50.is_enabled, N),
        ("is_enabled, 0% (no hash)", "`flags.is_enabled(f, uid)`", flags_0.is_enabled, N),
        (
            f"bucket alone ({'native' if RUST_AVAILABLE else 'mmh3: extension not loaded'})",
            "`bucket(f, uid)`",
            bucket,
            N,
        ),
        ("bucket alone, mmh3 twin", "`_fallback.bucket(f, uid)`", py_bucket, N),
        ("seed design without Redis: `hash()`", "`hash(f'{f}:{uid}') % 100 < pct`", seed_hash, N),
        (
            "Redis GET per request (seed design)",
            "`r.get(key)` then `bucket(f, uid) < pct`",
            redis_get_per_request,
            N_REDIS,
        ),
    ]
    units = [f"user-{i:08d}" for i in range(N)]
    results: dict[str, list[float]] = {label: [] for label, *_ in rows}
    gc.disable()
    try:
        for r in range(settings.repeats + settings.warmup_rounds):
            order = rows[r % len(rows) :] + rows[: r % len(rows)]
            for label, _call, fn, n in order:
                ns = time_loop(fn, units[:n])
                if r >= settings.warmup_rounds:
                    results[label].append(ns)
            gc.collect()
    finally:
        gc.enable()
        client.close()
    base = Summary.of(results[rows[0][0]]).median
    table = []
    for label, call, _fn, _n in rows:
        s = Summary.of(results[label])
        table.append((label, call, fmt_ns_summary(s), f"{s.median / base:.2f}x"))
    return md_table(["decision", "call", "per call, median (min-max)", "vs is_enabled 50%"], table)


CHILD = "--child"


async def child_main(url: str) -> None:
    from sark_native.flags import FeatureFlags

    async with FeatureFlags(redis=url, resync_interval=60) as flags:
        print("READY", flush=True)
        last = flags.get_rollout(FEATURE)
        while True:
            pct = flags.get_rollout(FEATURE)
            if pct != last:
                last = pct
                print(pct, time.monotonic_ns(), flush=True)
                if pct == 100:
                    return
            await asyncio.sleep(CHILD_POLL_S)


async def propagation(settings: Settings, url: str) -> str:
    from sark_native.flags import FeatureFlags

    changes = 30 if settings.quick else 300
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, CHILD, url, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    delays: list[int] = []
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"READY":
            raise RuntimeError(f"child said {line!r}")
        async with FeatureFlags(redis=url) as flags:
            for i in range(changes):
                pct = 100 if i == changes - 1 else 1 + i % 99
                sent = time.monotonic_ns()
                await flags.set_rollout(FEATURE, pct)
                line = await asyncio.wait_for(proc.stdout.readline(), 10)
                seen_pct, seen_at = line.split()
                if int(seen_pct) != pct:
                    raise RuntimeError(f"child saw {seen_pct!r}, expected {pct}")
                delays.append(int(seen_at) - sent)
                await asyncio.sleep(0.005)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    delays.sort()

    def p(q: float) -> int:
        return delays[min(len(delays) - 1, int(q * len(delays)))]

    rows = [
        (
            str(len(delays)),
            fmt_ns(p(0.5)),
            fmt_ns(p(0.99)),
            fmt_ns(delays[-1]),
            fmt_ns(statistics.fmean(delays)),
        )
    ]
    return md_table(["changes", "p50", "p99", "max", "mean"], rows)


def criterion_table() -> str:
    results = criterion_results("bucket")
    head = (
        "Rust core alone (`cargo bench --no-default-features --bench bucket`, `make bench-rust`; "
        f"criterion {criterion_version()}), per decision over the same 10k ids"
    )
    if not results:
        return head + ": no results under `target/criterion/bucket`; run `make bench-rust`."
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(r.modified for r in results)))
    rows = [
        (
            f"`{r.full_id}`",
            fmt_ns(r.median_ns / r.elements),
            f"{fmt_ns(r.median_low_ns / r.elements)}-{fmt_ns(r.median_high_ns / r.elements)}",
        )
        for r in results
    ]
    return f"{head} (run {stamp}):\n\n" + md_table(["bench", "median", "95% CI"], rows)


def run(settings: Settings) -> Section:
    with redis_server() as url:
        settings.log("rollout: per-call decision")
        calls = per_call(settings, url)
        settings.log("rollout: propagation across two processes")
        prop = asyncio.run(propagation(settings, url))
    body = "\n".join(
        [
            "Per request, in one process (10k distinct user ids, 2k for the Redis path; "
            f"{settings.repeats} interleaved rounds). Targets: `is_enabled` under 300 ns.",
            "",
            calls,
            "",
            "Propagation of `set_rollout` to a second process (Redis pub/sub on loopback; the "
            f"child polls its snapshot every {CHILD_POLL_S * 1e3:.1f} ms). Target: p99 under "
            "100 ms.",
            "",
            prop,
            "",
            criterion_table(),
        ]
    )
    versions = {d: package_version(d) for d in ("redis", "mmh3")}
    server = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")
    out = subprocess.run([server, "--version"], capture_output=True, text=True, check=False)
    versions["redis-server"] = out.stdout.split()[2].removeprefix("v=") if out.stdout else "?"
    return Section(NAME, TITLE, body, versions)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD:
        asyncio.run(child_main(sys.argv[2]))
    else:
        sys.exit(f"usage: run.py --only {NAME}  (or {CHILD} URL)")
