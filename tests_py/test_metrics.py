"""Prometheus metrics: counters kept by the components, read by a Collector at scrape time."""

from __future__ import annotations

import gc
import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import sark_native
from sark_native import metrics
from sark_native._backend import Backend


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_cache_operations_are_counted_per_name_and_implementation(backend: Backend) -> None:
    registry = CollectorRegistry()
    metrics.register(registry)
    name = f"test-{uuid.uuid4().hex}"
    c = sark_native.Cache(max_size=2, ttl=None, backend=backend, name=name)
    c.set("a", 1)
    c.set("b", 2)
    c.set("c", 3)  # evicts a
    assert c.get("b") == 2
    assert c.get("a") is None
    assert c.delete("b") is True
    labels = {"cache": name, "implementation": backend}
    assert sample(registry, "cache_operations_total", operation="get", **labels) == 2
    assert sample(registry, "cache_operations_total", operation="set", **labels) == 3
    assert sample(registry, "cache_operations_total", operation="delete", **labels) == 1
    assert sample(registry, "cache_requests_total", result="hit", **labels) == 1
    assert sample(registry, "cache_requests_total", result="miss", **labels) == 1
    assert sample(registry, "cache_evictions_total", **labels) == 1
    assert sample(registry, "cache_size_entries", **labels) == 1
    assert sample(registry, "cache_max_entries", **labels) == 2
    rust_size = sample(registry, "rust_cache_size_entries", cache=name)
    assert rust_size == (1 if backend == "rust" else None)


def test_counters_survive_a_dropped_cache(backend: Backend) -> None:
    registry = CollectorRegistry()
    metrics.register(registry)
    name = f"test-{uuid.uuid4().hex}"
    c = sark_native.Cache(backend=backend, name=name)
    for i in range(5):
        c.set(f"k{i}", i)
    del c
    gc.collect()
    labels = {"cache": name, "implementation": backend}
    assert sample(registry, "cache_operations_total", operation="set", **labels) == 5
    assert sample(registry, "cache_size_entries", **labels) == 0
    c2 = sark_native.Cache(backend=backend, name=name)
    c2.set("x", 1)
    assert sample(registry, "cache_operations_total", operation="set", **labels) == 6
    assert sample(registry, "cache_size_entries", **labels) == 1


def test_register_is_idempotent_and_takes_a_prefix() -> None:
    registry = CollectorRegistry()
    first = metrics.register(registry, prefix="gw_")
    assert metrics.register(registry, prefix="gw_") is first
    text = generate_latest(registry).decode()
    assert "gw_sark_native_info" in text
    assert f'version="{sark_native.__version__}"' in text


def test_nothing_registers_itself() -> None:
    from prometheus_client import REGISTRY

    names = {m.name for m in REGISTRY.collect()}
    assert "sark_native_info" not in names or any(
        isinstance(c, metrics.SarkNativeCollector)
        for c in list(REGISTRY._collector_to_names)  # registered explicitly by a test
    )


def test_hashes_and_verifications_are_counted_and_timed(backend: Backend) -> None:
    registry = CollectorRegistry()
    metrics.register(registry)
    impl = {"implementation": backend}

    def get(name: str, **labels: str) -> float:
        return sample(registry, name, **impl, **labels) or 0.0

    before_ok = get("password_hash_operations_total", operation="hash", result="ok")
    before_v = get("password_hash_operations_total", operation="verify", result="ok")
    before_mm = get("password_hash_operations_total", operation="verify", result="mismatch")
    before_n = get("password_hash_duration_seconds_count", operation="hash")
    h = sark_native.PasswordHasher(time_cost=1, memory_cost=64, backend=backend)
    phc = h.hash("pw")
    h.hash("pw2")
    assert h.verify(phc, "pw")
    with pytest.raises(sark_native.exceptions.VerifyMismatchError):
        h.verify(phc, "nope")
    assert get("password_hash_operations_total", operation="hash", result="ok") == before_ok + 2
    assert get("password_hash_operations_total", operation="verify", result="ok") == before_v + 1
    mismatches = get("password_hash_operations_total", operation="verify", result="mismatch")
    assert mismatches == before_mm + 1
    assert get("password_hash_duration_seconds_count", operation="hash") == before_n + 2
    # Sub-millisecond to seconds buckets.
    assert (
        sample(
            registry, "password_hash_duration_seconds_bucket", operation="hash", le="0.0005", **impl
        )
        is not None
    )
    assert (
        sample(
            registry, "password_hash_duration_seconds_bucket", operation="hash", le="10.0", **impl
        )
        is not None
    )
    assert get("password_hash_queue_depth") == 0
    assert get("password_hash_workers") >= 1
    assert sample(registry, "password_hash_rejected_total", **impl) is not None


@pytest.mark.asyncio
async def test_feature_flag_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from sark_native import metrics
    from sark_native.flags import FeatureFlags

    registry = CollectorRegistry()
    metrics.register(registry)
    flags = FeatureFlags()
    await flags.set_rollout("metric_feature", 40)
    on = sum(flags.is_enabled("metric_feature", f"u{i}") for i in range(500))
    text = generate_latest(registry).decode()
    assert (
        f'feature_flag_assignments_total{{feature="metric_feature",implementation="rust"}} {on}.0'
        in text
    )
    assert (
        'feature_flag_assignments_total{feature="metric_feature",implementation="python"} '
        f"{500 - on}.0" in text
    )
    assert 'feature_flag_rollout_percentage{feature="metric_feature"} 40.0' in text
    del flags


def test_tokens_are_counted_by_outcome_and_reason(backend: Backend) -> None:
    from sark_native.exceptions import DecodeError, ExpiredSignatureError, InvalidSignatureError

    registry = CollectorRegistry()
    metrics.register(registry)
    labels = {"implementation": backend}

    def value(name: str, **extra: str) -> float:
        return sample(registry, name, **labels, **extra) or 0.0

    before = {
        "issued": value("tokens_issued_total"),
        "verified": value("tokens_verified_total"),
        "decode": value("tokens_rejected_total", reason="decode"),
        "sig": value("tokens_rejected_total", reason="invalid_signature"),
        "expired": value("tokens_rejected_total", reason="expired"),
    }
    s = sark_native.Ed25519Signer.generate(backend=backend)
    other = sark_native.Ed25519Signer.generate(kid=s.kid, backend=backend)
    good = s.encode({"exp": 4_000_000_000})
    s.encode({"exp": 1})
    s.decode(good)
    s.decode(good)
    s.decode(good)
    for token, error in [
        ("nope", DecodeError),
        ("\ud800", DecodeError),
        (other.encode({"exp": 4_000_000_000}), InvalidSignatureError),
        (s.encode({"exp": 1}), ExpiredSignatureError),
    ]:
        with pytest.raises(error):
            s.decode(token)
    assert value("tokens_issued_total") - before["issued"] == 4
    assert value("tokens_verified_total") - before["verified"] == 3
    assert value("tokens_rejected_total", reason="decode") - before["decode"] == 2
    assert value("tokens_rejected_total", reason="invalid_signature") - before["sig"] == 1
    assert value("tokens_rejected_total", reason="expired") - before["expired"] == 1
    text = generate_latest(registry).decode()
    assert 'tokens_rejected_total{implementation="' in text


def test_policy_evaluations_are_counted_and_timed(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    registry = CollectorRegistry()
    metrics.register(registry)
    kwargs = {"opa_url": request.getfixturevalue("opa_url")} if backend == "python" else {}
    with sark_native.PolicyEngine(backend=backend, **kwargs) as e:
        e.load_policy("m", "package m\nx := input.a\ny := 1 / input.z\n")
        labels = {"implementation": backend}
        before = sample(registry, "opa_evaluations_total", **labels) or 0
        count_before = sample(registry, "opa_evaluation_duration_seconds_count", **labels) or 0
        errors = "opa_rust_errors_total" if backend == "rust" else "opa_python_errors_total"
        errors_before = sample(registry, errors, error_type="evaluation") or 0
        for i in range(5):
            assert e.evaluate("data.m.x", {"a": i}) == i
        with pytest.raises(sark_native.exceptions.PolicyEvaluationError):
            e.evaluate("data.m.y", {"z": 0})
        assert sample(registry, "opa_evaluations_total", **labels) == before + 6
        assert (
            sample(registry, "opa_evaluation_duration_seconds_count", **labels) == count_before + 6
        )
        assert sample(registry, errors, error_type="evaluation") == errors_before + 1
        if backend == "rust":
            assert (sample(registry, "rust_opa_policies_loaded") or 0) >= 1
            assert sample(registry, "opa_rust_fallback_total") is not None
    text = generate_latest(registry).decode()
    assert 'opa_evaluation_duration_seconds_bucket{implementation="' in text
    assert 'le="1e-06"' in text
