"""Shared helpers for the side-by-side benchmarks: settings, statistics, tables, machine facts.

Every ``bench_*.py`` module next to this file exposes ``NAME``, ``TITLE`` and
``run(settings) -> Section``; ``run.py`` calls the ones asked for and writes their sections into
``docs/benchmarks.md``. Nothing here asserts a time: a benchmark reports, a human judges.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

#: The repository root (``benches/py/..``).
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    """What every benchmark module gets from ``run.py``."""

    quick: bool = False
    #: Timed repeats of each measurement (interleaved across implementations within a repeat).
    repeats: int = 11
    #: Untimed rounds run first so caches, allocators and the CPU clock settle.
    warmup_rounds: int = 1
    verbose: bool = True

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)


@dataclass
class Section:
    """One component's part of ``docs/benchmarks.md``."""

    name: str
    title: str
    #: Markdown body, without the ``## title`` heading.
    body: str
    #: Versions of the peer packages this section ran against (distribution name -> version).
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    """Median and spread of a set of repeats."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("no values to summarise")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def spread(self) -> float:
        """(max - min) / median: how much the repeats disagreed."""
        return (self.high - self.low) / self.median if self.median else float("nan")


def fmt_ns(ns: float) -> str:
    """A duration in ns, to 3 significant figures, switching to us / ms when large."""
    if ns != ns:  # NaN
        return "n/a"
    if abs(ns) >= 1e6:
        return f"{ns / 1e6:.3g} ms"
    if abs(ns) >= 1e4:
        return f"{ns / 1e3:.3g} us"
    if abs(ns) >= 100:
        return f"{ns:.0f} ns"
    return f"{ns:.3g} ns"


def fmt_ns_summary(s: Summary) -> str:
    """``median (min-max)`` of durations in ns."""
    return f"{fmt_ns(s.median)} ({fmt_ns(s.low)}-{fmt_ns(s.high)})"


def fmt_ratio(s: Summary) -> str:
    """``median x (min-max)`` of ratios."""
    return f"{s.median:.2f}x ({s.low:.2f}-{s.high:.2f})"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def command_output(args: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def machine_info() -> list[tuple[str, str]]:
    """(label, value) pairs describing where the numbers were measured."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = [
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("CPU", cpu_model()),
        (
            "CPUs (nproc)",
            f"{affinity if affinity is not None else '?'} (os.cpu_count() {os.cpu_count()})",
        ),
        ("load average at start", ", ".join(f"{x:.2f}" for x in load) if load else "unknown"),
        ("OS", f"{platform.system()} {platform.release()} {platform.machine()}"),
        (
            "Python",
            f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        ),
    ]
    rustc = command_output(["rustc", "--version"])
    if rustc:
        rows.append(("rustc", rustc))
    return rows


def elf_section_names(data: bytes) -> list[str] | None:
    """Section names of a 64-bit ELF file (``None`` when ``data`` is not one)."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    end = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
    if shoff == 0 or shnum == 0 or shstrndx >= shnum:
        return []

    def header(i: int) -> tuple[int, ...]:
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, ...
        return struct.unpack_from(end + "IIQQQQIIQQ", data, shoff + i * shentsize)

    strtab = header(shstrndx)
    names = data[strtab[4] : strtab[4] + strtab[5]]
    out = []
    for i in range(shnum):
        start = header(i)[0]
        stop = names.find(b"\0", start)
        out.append(names[start : stop if stop >= 0 else len(names)].decode("ascii", "replace"))
    return out


def native_build_info() -> str:
    """How the sark_native extension was built, judged from the shared object's sections.

    The release profile (``make build`` runs ``maturin develop --release``) strips symbols and
    carries no DWARF; a debug build carries ``.debug_info``.
    """
    try:
        from sark_native import _native
    except ImportError as exc:
        return f"NOT LOADED ({exc}); only the pure-Python backend was measured"
    path = Path(str(getattr(_native, "__file__", "")))
    try:
        sections = elf_section_names(path.read_bytes())
    except (OSError, struct.error):
        return f"loaded from `{path.name}` (could not inspect it)"
    if sections is None:
        return f"loaded from `{path.name}` (not an ELF file: build type unknown)"
    stat = path.stat()
    facts = (
        f"`{path.name}`, {stat.st_size / 2**20:.1f} MiB, built "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(stat.st_mtime))}"
    )
    has_debug = ".debug_info" in sections
    has_symbols = ".symtab" in sections
    if not has_debug and not has_symbols:
        return (
            f"release build ({facts}; stripped, no debug info: the output of the release "
            'profile, `strip = "symbols"`; `make build` = `maturin develop --release`)'
        )
    what = " and ".join(
        x
        for x, present in (("DWARF debug info", has_debug), ("a symbol table", has_symbols))
        if present
    )
    return (
        f"**check the build**: {facts}, carries {what}, which the release profile strips: an "
        "optimised build with debug info, or a debug build (`make bench` rebuilds it with "
        "`maturin develop --release` first)"
    )


def criterion_version() -> str:
    """criterion's version from Cargo.lock."""
    lock = ROOT / "Cargo.lock"
    try:
        lines = lock.read_text(encoding="utf-8").splitlines()
    except OSError:
        return "unknown"
    for i, line in enumerate(lines):
        if line.strip() == 'name = "criterion"' and i + 1 < len(lines):
            return lines[i + 1].split("=", 1)[1].strip().strip('"')
    return "unknown"


@dataclass(frozen=True)
class CriterionResult:
    """One criterion benchmark's estimates, read from ``target/criterion``."""

    full_id: str
    #: Median time per criterion iteration, ns, and its 95% confidence interval.
    median_ns: float
    median_low_ns: float
    median_high_ns: float
    #: ``Throughput::Elements`` declared by the bench (operations per iteration), 1 when absent.
    elements: int
    modified: float

    @property
    def per_element_ns(self) -> float:
        return self.median_ns / self.elements

    @property
    def throughput_per_s(self) -> float:
        return self.elements / self.median_ns * 1e9


def criterion_results(group: str) -> list[CriterionResult]:
    """The latest (``new``) estimates of every bench in a criterion group, if any were run."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    base = target / "criterion"
    out: list[CriterionResult] = []
    for bench_json in sorted(base.glob("*/*/new/benchmark.json")):
        try:
            bench = json.loads(bench_json.read_text(encoding="utf-8"))
            est_path = bench_json.with_name("estimates.json")
            estimates = json.loads(est_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if bench.get("group_id") != group:
            continue
        median = estimates["median"]
        throughput = bench.get("throughput") or {}
        elements = int(throughput.get("Elements", 1)) if isinstance(throughput, dict) else 1
        out.append(
            CriterionResult(
                full_id=str(bench.get("full_id", bench_json.parent.parent.name)),
                median_ns=float(median["point_estimate"]),
                median_low_ns=float(median["confidence_interval"]["lower_bound"]),
                median_high_ns=float(median["confidence_interval"]["upper_bound"]),
                elements=max(elements, 1),
                modified=est_path.stat().st_mtime,
            )
        )
    return out


def criterion_section(group: str, description: str) -> str:
    """A component's "Rust core (criterion)" subsection: what ``cargo bench --bench <group>``
    measures (``description``, after the command), then each bench's median per element with
    criterion's 95% confidence interval of the median."""
    results = criterion_results(group)
    head = (
        "### Rust core (criterion)\n\n"
        f"`cargo bench --no-default-features --bench {group}` (`make bench-rust`; criterion "
        f"{criterion_version()}): {description}"
    )
    if not results:
        return (
            head
            + f"\n\nNo criterion results under `target/criterion/{group}`: run `make bench-rust`."
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(r.modified for r in results)))
    rows = [
        [
            f"`{r.full_id}`",
            fmt_ns(r.per_element_ns),
            f"{fmt_ns(r.median_low_ns / r.elements)}-{fmt_ns(r.median_high_ns / r.elements)}",
        ]
        for r in results
    ]
    return (
        head
        + f" Results of {stamp}.\n\n"
        + md_table(["bench", "median", "95% CI of the median"], rows)
    )
