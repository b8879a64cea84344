"""Argon2id side by side: sark_native's native pool against argon2-cffi (sync, and in an executor
of the same size), at the same parameters (t=3, m=64 MiB, p=1).

Measures, interleaved and repeated: time per hash; throughput with 1, 2 and 4 concurrent hashes;
the lag of a 1 ms event-loop ticker while 8 hashes run as awaitables (ours: ``hash_async``;
argon2-cffi: ``loop.run_in_executor`` on a 4-worker pool); peak RSS of a process running 8 hashes
on 4 workers (one subprocess each). Targets from issue 4 are printed next to each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchlib import Section, Settings, Summary, fmt_ratio, md_table, package_version

NAME = "hashing"
TITLE = "Password hashing: Argon2id t=3, m=64 MiB, p=1"
PEER_DISTS = ("argon2-cffi", "argon2-cffi-bindings")
T, M, P = 3, 65536, 1
WORKERS = 4


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms"


def _ms_summary(s: Summary) -> str:
    return f"{_ms(s.median)} ({_ms(s.low)}-{_ms(s.high)})"


def hashers() -> tuple[Any, Any]:
    import argon2

    import sark_native

    ours = sark_native.PasswordHasher(T, M, P, backend="rust")
    peer = argon2.PasswordHasher(T, M, P)
    return ours, peer


def per_hash(settings: Settings, ours: Any, peer: Any) -> tuple[Summary, Summary, Summary]:
    """One hash at a time, A B A B ...; both warmed up first (our workers fault in their block)."""
    for _ in range(WORKERS):
        ours.hash("warm up")
    peer.hash("warm up")
    a: list[float] = []
    b: list[float] = []
    for _ in range(settings.repeats):
        t0 = time.perf_counter()
        ours.hash("correct horse battery staple")
        t1 = time.perf_counter()
        peer.hash("correct horse battery staple")
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return Summary.of(a), Summary.of(b), Summary.of(ratios)


def throughput(n: int, per_thread: int, fn: Callable[[], object]) -> float:
    """Hashes per second with ``n`` threads each calling ``fn`` ``per_thread`` times."""
    barrier = threading.Barrier(n + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            fn()

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return n * per_thread / (time.perf_counter() - t0)


def run_throughput(settings: Settings, ours: Any, peer: Any) -> dict[tuple[str, int], Summary]:
    per_thread = 2 if settings.quick else 3
    rounds = max(3, settings.repeats // 3)
    out: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for n in (1, 2, 4):
            out.setdefault(("sark_native", n), []).append(
                throughput(n, per_thread, lambda: ours.hash("pw"))
            )
            out.setdefault(("argon2-cffi", n), []).append(
                throughput(n, per_thread, lambda: peer.hash("pw"))
            )
    return {k: Summary.of(v) for k, v in out.items()}


async def _lag(start_hashes: Callable[[], list[Any]]) -> list[float]:
    """Lateness of a 1 ms ticker while the hashes started by ``start_hashes`` run."""
    late: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            late.append(max(0.0, time.perf_counter() - t0 - 0.001))

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.005)
    late.clear()
    await asyncio.gather(*start_hashes())
    done.set()
    await task
    return late


def run_lag(settings: Settings, ours: Any, peer: Any) -> dict[str, tuple[Summary, Summary]]:
    """p99 and max ticker lateness per round, 8 hashes per round."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS)
    rounds = max(3, settings.repeats // 2)
    stats: dict[str, tuple[list[float], list[float]]] = {
        "idle": ([], []),
        "sark_native": ([], []),
        "argon2-cffi": ([], []),
    }

    async def idle() -> list[Any]:
        await asyncio.sleep(0.5)  # the ticker alone: the floor of this machine's timer lag
        return []

    def record(name: str, late: list[float]) -> None:
        late.sort()
        stats[name][0].append(late[min(len(late) - 1, int(0.99 * len(late)))])
        stats[name][1].append(late[-1])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            record("idle", await _lag(lambda: [idle()]))
            record("sark_native", await _lag(lambda: [ours.hash_async("pw") for _ in range(8)]))
            record(
                "argon2-cffi",
                await _lag(
                    lambda: [loop.run_in_executor(executor, peer.hash, "pw") for _ in range(8)]
                ),
            )

    try:
        asyncio.run(main())
    finally:
        executor.shutdown()
    return {k: (Summary.of(p99), Summary.of(mx)) for k, (p99, mx) in stats.items()}


# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child would report its parent's.
RSS_CHILD = """
import asyncio, concurrent.futures, json, sys
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
impl = sys.argv[1]
import argon2, sark_native
base = hwm()
if impl == "sark_native":
    sark_native.configure(hash_workers=4)
    h = sark_native.PasswordHasher(3, 65536, 1, backend="rust")
    async def main():
        await asyncio.gather(*[h.hash_async("pw") for _ in range(8)])
    asyncio.run(main())
else:
    ph = argon2.PasswordHasher(3, 65536, 1)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        list(ex.map(ph.hash, ["pw"] * 8))
peak = hwm()
print(json.dumps({"base_kib": base, "peak_kib": peak}))
"""


def run_rss() -> dict[str, dict[str, int]]:
    out = {}
    for impl in ("sark_native", "argon2-cffi"):
        r = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, impl],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        out[impl] = json.loads(r.stdout)
    return out


def report(
    settings: Settings,
    single: tuple[Summary, Summary, Summary],
    tput: dict[tuple[str, int], Summary],
    lag: dict[str, tuple[Summary, Summary]],
    rss: dict[str, dict[str, int]],
) -> str:
    ours_s, peer_s, ratio = single
    lines = [
        f"Both at t={T}, m={M} KiB, p={P}, hash_len 32, salt_len 16; our pool and argon2-cffi's "
        f"executor both have {WORKERS} workers for the concurrent rows "
        f"(`sark_native.configure(hash_workers={WORKERS})`); the machine has "
        f"{os.cpu_count()} CPUs. Medians of {settings.repeats} interleaved rounds "
        "(min-max).",
        "",
        "### Time per hash (one at a time)",
        "",
        md_table(
            ["sark_native", "argon2-cffi", "ratio (ours / theirs)", "target"],
            [
                (
                    _ms_summary(ours_s),
                    _ms_summary(peer_s),
                    fmt_ratio(ratio),
                    f"<= 0.8x: {'met' if ratio.median <= 0.8 else 'NOT met'}",
                )
            ],
        ),
        "",
        "### Throughput (hashes/s) with 1, 2 and 4 concurrent callers",
        "",
    ]
    rows = []
    for impl in ("sark_native", "argon2-cffi"):
        one = tput[(impl, 1)].median
        cells = [impl]
        for n in (1, 2, 4):
            s = tput[(impl, n)]
            cells.append(f"{s.median:.2f} ({s.low:.2f}-{s.high:.2f})")
        cells.append(f"{tput[(impl, 2)].median / one:.2f}x")
        cells.append(f"{tput[(impl, 4)].median / one:.2f}x")
        rows.append(cells)
    lines.append(md_table(["", "1", "2", "4", "2 vs 1", "4 vs 1"], rows))
    two = tput[("sark_native", 2)].median / tput[("sark_native", 1)].median
    lines += [
        "",
        f"Target: 2 concurrent >= 1.9x one: {'met' if two >= 1.9 else 'NOT met'} ({two:.2f}x).",
        "",
        "### Event-loop lag of a 1 ms ticker while 8 hashes run",
        "",
    ]
    lag_rows: list[tuple[str, ...]] = []
    for impl, label in (
        ("idle", "no hashes (the ticker alone, 0.5 s)"),
        ("sark_native", "sark_native `hash_async`"),
        ("argon2-cffi", f"argon2-cffi in a {WORKERS}-worker executor"),
    ):
        p99, mx = lag[impl]
        lag_rows.append((label, _ms_summary(p99), _ms_summary(mx)))
    lines.append(md_table(["", "p99 lateness", "max lateness"], lag_rows))
    p99, mx = lag["sark_native"]
    met = p99.median < 0.001 and mx.median < 0.003
    lines += [
        "",
        f"Target: p99 < 1 ms and max < 3 ms: {'met' if met else 'NOT met'} (medians of rounds).",
        "",
        "### Peak RSS, 8 hashes on 4 workers (one process each)",
        "",
    ]
    rss_rows: list[tuple[str, ...]] = []
    for impl, r in rss.items():
        grow = (r["peak_kib"] - r["base_kib"]) / 1024
        rss_rows.append((impl, f"{r['base_kib'] / 1024:.0f} MiB", f"{r['peak_kib'] / 1024:.0f} MiB",
                         f"{grow:.0f} MiB"))  # fmt: skip
    lines.append(md_table(["", "after import", "peak", "growth"], rss_rows))
    limit = WORKERS * M / 1024 + 20
    grow = (rss["sark_native"]["peak_kib"] - rss["sark_native"]["base_kib"]) / 1024
    lines += [
        "",
        f"Target: growth within workers x m + 20 MB = {limit:.0f} MiB: "
        f"{'met' if grow <= limit else 'NOT met'} ({grow:.0f} MiB).",
    ]
    return "\n".join(lines)


def run(settings: Settings) -> Section:
    import sark_native

    sark_native.configure(hash_workers=WORKERS)
    ours, peer = hashers()
    settings.log(f"hashing: per hash, {settings.repeats} rounds")
    single = per_hash(settings, ours, peer)
    settings.log("hashing: throughput 1/2/4")
    tput = run_throughput(settings, ours, peer)
    settings.log("hashing: event-loop lag")
    lag = run_lag(settings, ours, peer)
    settings.log("hashing: peak RSS (subprocesses)")
    rss = run_rss()
    body = report(settings, single, tput, lag, rss)
    versions = {d: package_version(d) for d in PEER_DISTS}
    return Section(NAME, TITLE, body, versions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings(quick=args.quick, repeats=3 if args.quick else 11)
    sys.stdout.write(run(settings).body + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
