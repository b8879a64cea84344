"""ML sidecar IPC: the native client side by side with the asyncio client, both against the same
echo worker process (``python -m sark_native.sidecar sidecar_echo_app:Echo``).

Measures, in interleaved rounds: round trip of a small request one at a time (p50 and p99 per
round); throughput with 64 requests in flight on one client; and the time from SIGKILL of a
supervised worker until a request succeeds again (a ``Sidecar`` with one worker; rounds spaced so
the restart backoff never applies), with natively spawned workers and with ``subprocess``. The
Rust columns are measured when ``backend="rust"`` works (the extension is loaded). Targets
(ARCHITECTURE.md): Rust p50 no slower than asyncio's, throughput with 64 in flight >= 1.3x,
restart after SIGKILL <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchlib import Section, Settings, Summary, fmt_ratio, md_table

if TYPE_CHECKING:
    from sark_native._backend import Backend

NAME = "sidecar"
TITLE = "ML sidecar: Unix-socket round trip, pipelined throughput, restart after SIGKILL"
APP = "sidecar_echo_app:Echo"
PARAMS = {"text": "a short prompt to classify", "n": 42}  # ~50 bytes of JSON
IN_FLIGHT = 64
HERE = Path(__file__).resolve().parent
#: Seconds between restart rounds: past the supervisor's STABLE_AFTER, so no backoff applies.
RESTART_SPACING = 1.2


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us"


def _us_summary(s: Summary) -> str:
    return f"{_us(s.median)} ({_us(s.low)}-{_us(s.high)})"


def _ms_summary(s: Summary) -> str:
    return f"{s.median * 1e3:.0f} ms ({s.low * 1e3:.0f}-{s.high * 1e3:.0f})"


def backends() -> tuple[list[Backend], str | None]:
    """The client backends to measure, and why Rust is missing (if it is)."""
    import sark_native
    from sark_native.exceptions import BackendUnavailableError

    try:
        sark_native.SidecarClient("/tmp/probe.sock", backend="rust")
    except BackendUnavailableError as exc:
        only_python: list[Backend] = ["python"]
        return only_python, str(exc)
    both: list[Backend] = ["rust", "python"]
    return both, None


def start_worker(path: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(HERE), *(p for p in sys.path if p)]))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sark_native.sidecar",
            APP,
            "--socket",
            path,
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the echo worker did not start")
        time.sleep(0.01)
    return proc


async def round_trips(client: Any, n: int, method: str = "echo") -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.request(method, PARAMS)
        out.append(time.perf_counter() - t0)
    return out


async def throughput(client: Any, total: int) -> float:
    per_task = total // IN_FLIGHT

    async def task() -> None:
        for _ in range(per_task):
            await client.request("echo", PARAMS)

    t0 = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(IN_FLIGHT)))
    return per_task * IN_FLIGHT / (time.perf_counter() - t0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure_clients(
    settings: Settings, path: str, names: list[Backend]
) -> dict[str, dict[str, list[float]]]:
    import sark_native

    n = 500 if settings.quick else 3000
    total = 3200 if settings.quick else 25600
    results: dict[str, dict[str, list[float]]] = {
        b: {"p50": [], "p99": [], "tput": [], "sync_p50": []} for b in names
    }
    clients = {b: sark_native.SidecarClient(path, backend=b, timeout=30) for b in names}
    try:
        for c in clients.values():  # warm up: connections, caches
            await round_trips(c, 200)
            await throughput(c, IN_FLIGHT * 10)
        for r in range(settings.repeats):
            order = names if r % 2 == 0 else list(reversed(names))
            for b in order:
                lat = await round_trips(clients[b], n)
                results[b]["p50"].append(percentile(lat, 0.50))
                results[b]["p99"].append(percentile(lat, 0.99))
            for b in order:
                results[b]["tput"].append(await throughput(clients[b], total))
            for b in order:
                lat = await round_trips(clients[b], n // 2, "echo_sync")
                results[b]["sync_p50"].append(statistics.median(lat))
            settings.log(f"sidecar: round {r + 1}/{settings.repeats}")
    finally:
        for c in clients.values():
            await c.aclose()
    return results


async def measure_restart(settings: Settings, backend: Backend) -> list[float]:
    import sark_native

    rounds = 3 if settings.quick else 7
    out = []
    env = {"PYTHONPATH": str(HERE)}
    async with sark_native.Sidecar(APP, backend=backend, env=env, timeout=10) as sc:
        await sc.request("echo", PARAMS)
        for _ in range(rounds):
            await asyncio.sleep(RESTART_SPACING)
            (pid,) = sc.pids
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while True:
                try:
                    await sc.request("echo", PARAMS, timeout=2.0)
                    break
                except ConnectionError:  # SidecarUnavailableError while it restarts
                    await asyncio.sleep(0.001)
            out.append(time.perf_counter() - t0)
    return out


def report(
    settings: Settings,
    names: list[Backend],
    why_no_rust: str | None,
    clients: dict[str, dict[str, list[float]]],
    restarts: dict[Backend, list[float]],
) -> str:
    label = {"rust": 'native client (`backend="rust"`)', "python": "asyncio client"}
    lines = [
        f"One echo worker process (async `echo` method) serves every client; a request is "
        f"`{PARAMS}` (~50 bytes of JSON). Medians of {settings.repeats} interleaved rounds "
        f"(min-max); the machine has {os.cpu_count()} CPUs, shared by the clients, the worker "
        "and the benchmark loop.",
        "",
    ]
    if why_no_rust:
        lines += [f"Rust client: not measured ({why_no_rust}).", ""]
    lines += ["### Round trip, one request at a time", ""]
    rows = []
    for b in names:
        r = clients[b]
        rows.append(
            (
                label[b],
                _us_summary(Summary.of(r["p50"])),
                _us_summary(Summary.of(r["p99"])),
                _us_summary(Summary.of(r["sync_p50"])),
            )
        )
    lines.append(md_table(["", "p50", "p99", "p50 to a sync method (thread-pool hop)"], rows))
    lines += ["", f"### Throughput with {IN_FLIGHT} requests in flight (one client)", ""]
    trows = []
    for b in names:
        s = Summary.of(clients[b]["tput"])
        trows.append((label[b], f"{s.median:,.0f} ({s.low:,.0f}-{s.high:,.0f}) req/s"))
    lines.append(md_table(["", "throughput"], trows))
    if "rust" in names:
        p50 = Summary.of(
            [a / b for a, b in zip(clients["rust"]["p50"], clients["python"]["p50"], strict=True)]
        )
        tput = Summary.of(
            [a / b for a, b in zip(clients["rust"]["tput"], clients["python"]["tput"], strict=True)]
        )
        lines += [
            "",
            f"Targets: Rust p50 <= asyncio p50: {'met' if p50.median <= 1.0 else 'NOT met'} "
            f"(ratio {fmt_ratio(p50)}); throughput >= 1.3x: "
            f"{'met' if tput.median >= 1.3 else 'NOT met'} ({fmt_ratio(tput)}).",
        ]
    lines += [
        "",
        "### Restart after SIGKILL (one supervised echo worker)",
        "",
        "From `kill -9` of the worker until a request succeeds again: the supervisor notices the "
        "exit, spawns a new interpreter, waits for its first ping, and routes to it.",
        "",
    ]
    rrows = []
    for b, values in restarts.items():
        s = Summary.of(values)
        verdict = "met" if s.median <= 1.0 else "NOT met"
        rrows.append(
            (
                "native workers and client"
                if b == "rust"
                else "subprocess workers, asyncio client",
                _ms_summary(s),
                f"<= 1 s: {verdict}",
            )
        )
    lines.append(md_table(["", "time to healthy", "target"], rrows))
    return "\n".join(lines)


def run(settings: Settings) -> Section:
    names, why_no_rust = backends()
    directory = tempfile.mkdtemp(prefix="sn-bench-", dir="/tmp" if os.path.isdir("/tmp") else None)
    path = os.path.join(directory, "echo.sock")
    worker = start_worker(path)
    try:
        settings.log("sidecar: round trips and throughput")
        clients = asyncio.run(measure_clients(settings, path, names))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)
    restarts: dict[Backend, list[float]] = {}
    for b in names:
        settings.log(f"sidecar: restart after SIGKILL ({b})")
        restarts[b] = asyncio.run(measure_restart(settings, b))
    body = report(settings, names, why_no_rust, clients, restarts)
    return Section(NAME, TITLE, body, {"CPython (asyncio)": platform.python_version()})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings(quick=args.quick, repeats=3 if args.quick else 11)
    sys.stdout.write(run(settings).body + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
