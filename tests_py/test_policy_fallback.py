"""backend="auto" with an opa_url: the native engine retries internal failures on the HTTP path
(logged, counted), never policy errors or bad input; writes go to both, and a failed write to the
fallback disables it. Internal failures are injected with ``_inject_policy_faults`` (what a panic
inside regorus would do). These need both paths in one process: they exist when the extension is
built (the suite with SARK_NATIVE_BACKEND=python has no native path to fall back from)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import sark_native
from sark_native import _backend
from sark_native import exceptions as ex

if sark_native.RUST_AVAILABLE:
    native = _backend.native()

    @pytest.fixture
    def auto(opa_url: str) -> Iterator[Any]:
        engine = sark_native.PolicyEngine(opa_url=opa_url, time_limit=0.5)
        yield engine
        native._inject_policy_faults(0)
        engine.close()

    def fallbacks() -> int:
        return int(native._policy_metrics()["fallbacks"])

    def test_writes_go_to_both_and_internal_failures_fall_back(
        auto: Any, opa_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        assert auto.backend == "rust"
        assert auto.fallback.backend == "python"
        assert auto.fallback_available
        auto.load_policy("t", "package t\nx := input.a * 2\nroles := data.roles\n")
        auto.set_data({"roles": ["r"]})
        http = sark_native.PolicyEngine(backend="python", opa_url=opa_url)
        try:
            # The server got the policy and the data through the fallback.
            assert http.evaluate("data.t.x", {"a": 3}) == 6
            assert http.evaluate("data.t.roles") == ["r"]
        finally:
            http.close()
        before = fallbacks()
        native._inject_policy_faults(1)
        with caplog.at_level(logging.WARNING, logger="sark_native.policy"):
            assert auto.evaluate("data.t.x", {"a": 21}) == 42
        assert fallbacks() == before + 1
        assert any("retrying on the HTTP path" in r.getMessage() for r in caplog.records)
        # The next evaluation is native again.
        assert auto.evaluate("data.t.x", {"a": 1}) == 2
        assert fallbacks() == before + 1
        auto.remove_policy("t")
        with pytest.raises(ex.PolicyNotFoundError):
            auto.remove_policy("t")

    def test_policy_errors_and_bad_input_are_not_retried(auto: Any) -> None:
        auto.load_policy("t", "package t\nx := 1 / input.z\n")
        before = fallbacks()
        with pytest.raises(ex.PolicyEvaluationError):
            auto.evaluate("data.t.x", {"z": 0})
        with pytest.raises(TypeError):
            auto.evaluate("data.t.x", {"z": object()})
        with pytest.raises(ValueError, match="path must be"):
            auto.evaluate("data.t.x-y")
        assert fallbacks() == before

    def test_batch_and_async_fall_back_too(auto: Any) -> None:
        auto.load_policy("t", "package t\nx := input.a + 1\n")
        before = fallbacks()
        native._inject_policy_faults(2)
        assert auto.evaluate_batch("data.t.x", [{"a": i} for i in range(6)]) == [1, 2, 3, 4, 5, 6]
        assert fallbacks() == before + 2

        async def run() -> Any:
            native._inject_policy_faults(1)
            value = await auto.evaluate_async("data.t.x", {"a": 9})
            await auto.aclose()
            return value

        assert asyncio.run(run()) == 10
        assert fallbacks() == before + 3

    def test_a_failed_write_disables_the_fallback(
        tmp_path: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        dead = f"unix://{tmp_path}/nobody.sock"
        engine = sark_native.PolicyEngine(opa_url=dead, timeout=1.0)
        try:
            with caplog.at_level(logging.WARNING, logger="sark_native.policy"):
                engine.load_policy("t", "package t\nx := 1\n")  # native succeeds, mirror fails
            assert not engine.fallback_available
            assert any("fallback is disabled" in r.getMessage() for r in caplog.records)
            assert native._policy_metrics()["fallback_write_failures"] >= 1
            assert engine.evaluate("data.t.x") == 1
            # An internal failure now raises instead of asking a server with stale rules.
            native._inject_policy_faults(1)
            with pytest.raises(RuntimeError, match="injected fault"):
                engine.evaluate("data.t.x")
            assert engine.evaluate("data.t.x") == 1
        finally:
            native._inject_policy_faults(0)
            engine.close()

    def test_without_a_fallback_internal_failures_raise(opa_url: str) -> None:
        engine = sark_native.PolicyEngine(backend="rust")
        try:
            engine.load_policy("t", "package t\nx := 1\n")
            native._inject_policy_faults(1)
            with pytest.raises(RuntimeError, match="injected fault"):
                engine.evaluate("data.t.x")
            assert engine.evaluate("data.t.x") == 1
        finally:
            native._inject_policy_faults(0)
            engine.close()


def test_the_decision_cache_fronts_the_http_path(opa_url: str) -> None:
    cache = sark_native.Cache(max_size=100, ttl=60.0, backend="python")
    e = sark_native.PolicyEngine(backend="python", opa_url=opa_url, decision_cache=cache)
    try:
        e.load_policy("t", "package t\nx := input.a\ny if input.a > 5\n")
        assert e.evaluate("data.t.x", {"a": 1}) == 1
        assert e.evaluate("data.t.y", {"a": 1}) is None
        hits = cache.stats()["hits"]
        assert e.evaluate("data.t.x", {"a": 1}) == 1
        assert e.evaluate("data.t.y", {"a": 1}, default=False) is False  # undefined is cached too
        assert cache.stats()["hits"] == hits + 2
        # A new version of the policies (or data) is a new key: no stale decision.
        e.load_policy("t", "package t\nx := input.a * 10\n")
        assert e.evaluate("data.t.x", {"a": 1}) == 10
    finally:
        e.close()


def test_the_decision_cache_fronts_evaluate_async(opa_url: str) -> None:
    cache = sark_native.Cache(max_size=100, ttl=60.0, backend="python")
    e = sark_native.PolicyEngine(backend="python", opa_url=opa_url, decision_cache=cache)
    try:
        e.load_policy("t", "package t\nx := input.a\ny if input.a > 5\n")

        async def run() -> list[object]:
            first = [await e.evaluate_async("data.t.x", {"a": 2})]
            hits = cache.stats()["hits"]
            again = await e.evaluate_async("data.t.x", {"a": 2})
            undefined = await e.evaluate_async("data.t.y", {"a": 2}, default="no")
            cached_undefined = await e.evaluate_async("data.t.y", {"a": 2}, default="no")
            return [*first, again, undefined, cached_undefined, cache.stats()["hits"] - hits]

        assert asyncio.run(run()) == [2, 2, "no", "no", 2]
    finally:
        e.close()


def test_an_unreachable_server_is_a_counted_evaluation_error(tmp_path: Any) -> None:
    from sark_native._fallback import policy as py_policy

    url = f"unix://{tmp_path}/nobody.sock"
    e = sark_native.PolicyEngine(backend="python", opa_url=url, timeout=2.0)
    try:
        before = py_policy.policy_metrics()["errors"]["other"]
        with pytest.raises(ex.PolicyEvaluationError, match="unreachable"):
            e.evaluate("data.t.x", {"a": 1})

        async def run() -> object:
            return await e.evaluate_async("data.t.x", {"a": 1})

        with pytest.raises(ex.PolicyEvaluationError, match="unreachable"):
            asyncio.run(run())
        assert py_policy.policy_metrics()["errors"]["other"] == before + 2
    finally:
        e.close()
