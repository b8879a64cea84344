"""Prometheus metrics for sark_native, read at scrape time from counters the components keep.

Nothing registers itself: call :func:`register` with the registry your app exposes. The counters
live in Rust atomics or plain integers updated under the component's own lock, so a cache
operation, a rollout decision (``FeatureFlags.is_enabled``) or a native token makes no Python call
for metrics; the Collector sums them when Prometheus scrapes.

Each process reports its own values (prometheus_client's multiprocess mode does not cover custom
collectors): scrape every worker, or aggregate per pod.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import _backend
from ._fallback import cache as _py_cache
from ._fallback import hashing as _py_hashing
from ._fallback import policy as _py_policy
from ._fallback import sidecar as _py_sidecar
from ._version import VERSION

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .flags import FeatureFlags

__all__ = ["SarkNativeCollector", "register"]


def _token_counters() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(implementation, counters)`` of the token paths of both backends."""
    if _backend.RUST_AVAILABLE:
        yield "rust", _backend.native()._token_metrics()
    # The pure-Python path is imported on first use (it needs joserfc); before that it has
    # counted nothing, and a scrape should not import it.
    py_tokens = sys.modules.get("sark_native._fallback.tokens")
    if py_tokens is not None:
        yield "python", py_tokens.token_metrics()


def _cache_counters() -> Iterator[tuple[str, str, dict[str, int]]]:
    """``(implementation, cache name, counters)`` for every cache of both backends."""
    if _backend.RUST_AVAILABLE:
        for name, counters in _backend.native()._cache_metrics():
            yield "rust", name, counters
    for name, counters in _py_cache.cache_metrics():
        yield "python", name, counters


def _hashing_counters() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(implementation, counters)`` of the hash pool of each backend."""
    if _backend.RUST_AVAILABLE:
        yield "rust", _backend.native()._hashing_metrics()
    yield "python", _py_hashing.hashing_metrics()


def _hashing_families(p: str) -> Iterator[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    ops = CounterMetricFamily(
        f"{p}password_hash_operations",
        "Password hashes and verifications by implementation, operation (hash, verify) and "
        "result (ok, mismatch, error)",
        labels=["implementation", "operation", "result"],
    )
    duration = HistogramMetricFamily(
        f"{p}password_hash_duration_seconds",
        "Time a worker spent on one Argon2 hash or verification",
        labels=["implementation", "operation"],
    )
    rejected = CounterMetricFamily(
        f"{p}password_hash_rejected",
        "Calls shed with OverloadedError because the hash queue was full",
        labels=["implementation"],
    )
    depth = GaugeMetricFamily(
        f"{p}password_hash_queue_depth",
        "Hash jobs waiting for a worker",
        labels=["implementation"],
    )
    running = GaugeMetricFamily(
        f"{p}password_hash_running",
        "Hash jobs a worker is computing now",
        labels=["implementation"],
    )
    workers = GaugeMetricFamily(
        f"{p}password_hash_workers", "Size of the hash pool", labels=["implementation"]
    )
    for impl, m in _hashing_counters():
        bounds = m["bounds"]
        for op in ("hash", "verify"):
            c = m[op]
            for result in ("ok", "mismatch", "error"):
                if op == "hash" and result == "mismatch":
                    continue
                ops.add_metric([impl, op, result], c[result])
            cumulative = 0
            buckets = []
            for bound, n in zip([*(str(b) for b in bounds), "+Inf"], c["buckets"], strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            duration.add_metric([impl, op], buckets, c["sum"])
        rejected.add_metric([impl], m["rejected"])
        depth.add_metric([impl], m["queue_depth"])
        running.add_metric([impl], m["running"])
        workers.add_metric([impl], m["workers"])
    yield from (ops, duration, rejected, depth, running, workers)


def _policy_counters() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(implementation, counters)`` of the policy engines of each backend."""
    if _backend.RUST_AVAILABLE:
        yield "rust", _backend.native()._policy_metrics()
    yield "python", _py_policy.policy_metrics()


def _policy_families(p: str) -> Iterator[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    duration = HistogramMetricFamily(
        f"{p}opa_evaluation_duration_seconds",
        "Policy evaluation time by implementation (rust: in-process; python: the HTTP round trip)",
        labels=["implementation"],
    )
    total = CounterMetricFamily(
        f"{p}opa_evaluations",
        "Policy evaluations by implementation",
        labels=["implementation"],
    )
    errors = CounterMetricFamily(
        f"{p}opa_rust_errors",
        "Failed native evaluations by error type (evaluation, input, internal, other)",
        labels=["error_type"],
    )
    python_errors = CounterMetricFamily(
        f"{p}opa_python_errors",
        "Failed evaluations of the HTTP path by error type",
        labels=["error_type"],
    )
    fallback = CounterMetricFamily(
        f"{p}opa_rust_fallback",
        "Native evaluations that failed internally and were retried on the HTTP path",
    )
    fallback_writes = CounterMetricFamily(
        f"{p}opa_rust_fallback_write_failures",
        "Policy writes that failed on the HTTP fallback (which is then disabled)",
    )
    loaded = GaugeMetricFamily(
        f"{p}rust_opa_policies_loaded", "Policies loaded in the native engines of this process"
    )
    for impl, m in _policy_counters():
        cumulative = 0
        buckets = []
        bounds = [*(str(b) for b in m["buckets"]), "+Inf"]
        for bound, n in zip(bounds, m["bucket_counts"], strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        duration.add_metric([impl], buckets, m["sum_seconds"])
        total.add_metric([impl], m["evaluations"])
        family = errors if impl == "rust" else python_errors
        for error_type, n in m["errors"].items():
            family.add_metric([error_type], n)
        if impl == "rust":
            fallback.add_metric([], m["fallbacks"])
            fallback_writes.add_metric([], m["fallback_write_failures"])
            loaded.add_metric([], m["policies"])
    yield from (duration, total, errors, python_errors, fallback, fallback_writes, loaded)


def _sidecar_counters() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(implementation, counters)`` of the sidecar clients and supervisors of each backend."""
    if _backend.RUST_AVAILABLE:
        yield "rust", _backend.native()._sidecar_metrics()
    yield "python", _py_sidecar.sidecar_metrics()


def _sidecar_families(p: str) -> Iterator[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    requests = CounterMetricFamily(
        f"{p}sidecar_requests",
        "Requests to sidecar workers (after validation; pings not counted)",
        labels=["implementation"],
    )
    errors = CounterMetricFamily(
        f"{p}sidecar_errors",
        "Sidecar requests that failed, by error type (timeout, unavailable, protocol, remote)",
        labels=["implementation", "error_type"],
    )
    restarts = CounterMetricFamily(
        f"{p}sidecar_restarts",
        "Sidecar workers restarted (after an exit, a failed ping or a hang)",
        labels=["implementation"],
    )
    in_flight = GaugeMetricFamily(
        f"{p}sidecar_in_flight", "Sidecar requests awaiting an answer", labels=["implementation"]
    )
    duration = HistogramMetricFamily(
        f"{p}sidecar_request_duration_seconds",
        "Time from sending a sidecar request to its answer or error",
        labels=["implementation"],
    )
    for impl, m in _sidecar_counters():
        requests.add_metric([impl], m["requests"])
        for error_type, n in m["errors"].items():
            errors.add_metric([impl, error_type], n)
        restarts.add_metric([impl], m["restarts"])
        in_flight.add_metric([impl], m["in_flight"])
        cumulative = 0
        buckets = []
        for bound, n in zip([*(str(b) for b in m["bounds"]), "+Inf"], m["buckets"], strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        duration.add_metric([impl], buckets, m["sum"])
    yield from (requests, errors, restarts, in_flight, duration)


#: Every live FeatureFlags in this process; their counters are read at scrape time.
_flags: weakref.WeakSet[FeatureFlags] = weakref.WeakSet()


def _track_flags(flags: FeatureFlags) -> None:
    """Called by ``FeatureFlags.__init__``: its assignments and percentages are reported."""
    _flags.add(flags)


def _flag_metrics() -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Assignments summed over every FeatureFlags, by (feature, implementation), and the
    percentage in force per feature (the first instance that knows the feature wins)."""
    assignments: dict[tuple[str, str], int] = {}
    percentages: dict[str, int] = {}
    for flags in list(_flags):
        for feature, by_impl in flags.assignments().items():
            for impl, n in by_impl.items():
                assignments[(feature, impl)] = assignments.get((feature, impl), 0) + n
        for feature, pct in flags.rollouts().items():
            percentages.setdefault(feature, pct)
    return assignments, percentages


class SarkNativeCollector:
    """A prometheus_client Collector over every sark_native component in this process."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def describe(self) -> list[Any]:
        # An empty description keeps registration from calling collect() (and touching the
        # components) at import time.
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = self.prefix
        info = GaugeMetricFamily(
            f"{p}sark_native_info",
            "sark_native build and backend",
            labels=["version", "rust_available"],
        )
        info.add_metric([VERSION, str(_backend.RUST_AVAILABLE).lower()], 1.0)
        yield info

        ops = CounterMetricFamily(
            f"{p}cache_operations",
            "Cache operations by cache, implementation and operation (get, set, delete)",
            labels=["cache", "implementation", "operation"],
        )
        results = CounterMetricFamily(
            f"{p}cache_requests",
            "Cache reads by result (hit, miss)",
            labels=["cache", "implementation", "result"],
        )
        evictions = CounterMetricFamily(
            f"{p}cache_evictions",
            "Live entries evicted to make room",
            labels=["cache", "implementation"],
        )
        expirations = CounterMetricFamily(
            f"{p}cache_expirations",
            "Entries removed because their time to live ran out",
            labels=["cache", "implementation"],
        )
        size = GaugeMetricFamily(
            f"{p}cache_size_entries",
            "Entries held (may include expired entries not swept yet)",
            labels=["cache", "implementation"],
        )
        max_size = GaugeMetricFamily(
            f"{p}cache_max_entries", "Bound on entries held", labels=["cache", "implementation"]
        )
        rust_size = GaugeMetricFamily(
            f"{p}rust_cache_size_entries", "Entries held by the Rust caches", labels=["cache"]
        )
        for impl, name, c in _cache_counters():
            labels = [name, impl]
            ops.add_metric([*labels, "get"], c["hits"] + c["misses"])
            ops.add_metric([*labels, "set"], c["sets"])
            ops.add_metric([*labels, "delete"], c["deletes"])
            results.add_metric([*labels, "hit"], c["hits"])
            results.add_metric([*labels, "miss"], c["misses"])
            evictions.add_metric(labels, c["evictions"])
            expirations.add_metric(labels, c["expirations"])
            size.add_metric(labels, c["size"])
            max_size.add_metric(labels, c["max_size"])
            if impl == "rust":
                rust_size.add_metric([name], c["size"])
        yield from (ops, results, evictions, expirations, size, max_size, rust_size)
        yield from _hashing_families(p)
        yield from _policy_families(p)
        yield from _sidecar_families(p)

        assignments, percentages = _flag_metrics()
        assigned = CounterMetricFamily(
            f"{p}feature_flag_assignments",
            "Rollout decisions (FeatureFlags.is_enabled) by feature and the implementation chosen",
            labels=["feature", "implementation"],
        )
        for (feature, impl), n in sorted(assignments.items()):
            assigned.add_metric([feature, impl], n)
        rollout = GaugeMetricFamily(
            f"{p}feature_flag_rollout_percentage",
            "Rollout percentage in force in this process, by feature",
            labels=["feature"],
        )
        for feature, pct in sorted(percentages.items()):
            rollout.add_metric([feature], pct)
        fallbacks = CounterMetricFamily(
            f"{p}rust_fallback",
            "Native calls that failed internally and were retried on the Python path",
            labels=["component", "error_type"],
        )
        from .flags._fallback_call import fallback_counts

        for (component, error_type), n in sorted(fallback_counts().items()):
            fallbacks.add_metric([component, error_type], n)
        yield from (assigned, rollout, fallbacks)
        issued = CounterMetricFamily(
            f"{p}tokens_issued", "Tokens signed (encode)", labels=["implementation"]
        )
        verified = CounterMetricFamily(
            f"{p}tokens_verified",
            "Tokens that passed decode (signature and claim checks)",
            labels=["implementation"],
        )
        rejected = CounterMetricFamily(
            f"{p}tokens_rejected",
            "Tokens refused by decode, by reason (decode, invalid_signature, expired, immature, "
            "invalid_audience, invalid_issuer, missing_claim)",
            labels=["implementation", "reason"],
        )
        for impl, t in _token_counters():
            issued.add_metric([impl], t["issued"])
            verified.add_metric([impl], t["verified"])
            for reason, n in t["rejected"].items():
                rejected.add_metric([impl, reason], n)
        yield from (issued, verified, rejected)


_registered: weakref.WeakKeyDictionary[Any, SarkNativeCollector] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register(registry: CollectorRegistry | None = None, prefix: str = "") -> SarkNativeCollector:
    """Adds the sark_native Collector to ``registry`` (default: prometheus_client's global
    ``REGISTRY``) once; calling it again with the same registry returns the same Collector."""
    if registry is None:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    with _lock:
        existing = _registered.get(registry)
        if existing is not None:
            return existing
        collector = SarkNativeCollector(prefix)
        registry.register(collector)
        _registered[registry] = collector
        return collector
