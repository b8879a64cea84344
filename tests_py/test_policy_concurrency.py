"""Hot swap under load on both backends, threads sharing one engine, and the process model of the
native policy pool (fork, exit)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import sark_native
from sark_native._backend import Backend


def engine_for(backend: Backend, request: pytest.FixtureRequest) -> Any:
    if backend == "python":
        return sark_native.PolicyEngine(
            backend="python", opa_url=request.getfixturevalue("opa_url")
        )
    return sark_native.PolicyEngine(backend="rust")


def version(tag: str) -> str:
    return (
        f'package swap\nallow if input.user == "{tag}"\na := "{tag}"\nb := "{tag}"\n'
        f'deny contains m if {{ some m in input.msgs; m != "{tag}" }}\n'
    )


def test_hot_swap_under_load(backend: Backend, request: pytest.FixtureRequest) -> None:
    """Four threads evaluate while the policy is swapped 100 times: no evaluation fails, and each
    sees one version entirely (the rules of the package document agree)."""
    e = engine_for(backend, request)
    try:
        e.load_policy("swap", version("A"))
        stop = threading.Event()
        errors: list[BaseException] = []
        counts = [0] * 4

        def reader(i: int) -> None:
            try:
                while not stop.is_set():
                    doc = e.evaluate("data.swap", {"user": "A", "msgs": ["A", "B"]})
                    assert doc["a"] == doc["b"], doc
                    assert doc["deny"] == (["B"] if doc["a"] == "A" else ["A"]), doc
                    assert doc.get("allow") is (True if doc["a"] == "A" else None), doc
                    counts[i] += 1
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for i in range(100):
            e.load_policy("swap", version("B" if i % 2 == 0 else "A"))
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors[0]
        assert all(n > 0 for n in counts), counts
    finally:
        e.close()


def test_threads_share_one_engine(backend: Backend, request: pytest.FixtureRequest) -> None:
    e = engine_for(backend, request)
    try:
        e.load_policy("t", "package t\nx := input.n * 2\nok if input.n >= 0\n")
        results: dict[int, list[Any]] = {}

        def work(i: int) -> None:
            results[i] = [e.evaluate("data.t.x", {"n": i * 1000 + k}) for k in range(200)]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for i in range(4):
            assert results[i] == [(i * 1000 + k) * 2 for k in range(200)]
    finally:
        e.close()


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


if sark_native.RUST_AVAILABLE:

    def test_the_policy_pool_survives_fork() -> None:
        out = run_python(
            """
            import os, sark_native
            from sark_native import _backend
            e = sark_native.PolicyEngine(backend="rust")
            e.load_policy("t", "package t\\nx := input.a + 1\\n")
            assert e.evaluate_batch("data.t.x", [{"a": i} for i in range(50)])[-1] == 50
            assert _backend.native()._policy_pool_running()
            pid = os.fork()
            if pid == 0:
                ok = e.evaluate_batch("data.t.x", [{"a": i} for i in range(50)])[-1] == 50
                ok = ok and _backend.native()._policy_pool_running()
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert e.evaluate_batch("data.t.x", [{"a": 1}]) == [2]
            print("ok")
            """
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "ok"

    def test_pending_awaitables_at_exit() -> None:
        out = run_python(
            """
            import asyncio, sark_native
            e = sark_native.PolicyEngine(backend="rust")
            e.load_policy("t", "package t\\nx := input.a\\n")
            async def main():
                futs = [e.evaluate_async("data.t.x", {"a": i}) for i in range(200)]
                return sum(await asyncio.gather(*futs))
            print(asyncio.run(main()))
            """
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(sum(range(200)))
        assert "panicked" not in out.stderr

    def test_configure_policy_pool() -> None:
        from sark_native.policy import configure_policy_pool

        before = configure_policy_pool()
        try:
            assert configure_policy_pool(1) == 1
            e = sark_native.PolicyEngine(backend="rust")
            e.load_policy("t", "package t\nx := input.a\n")
            assert e.evaluate_batch("data.t.x", [{"a": i} for i in range(10)]) == list(range(10))
            with pytest.raises(ValueError, match="policy_workers"):
                configure_policy_pool(0)
            with pytest.raises(TypeError):
                configure_policy_pool("2")  # type: ignore[arg-type]
        finally:
            configure_policy_pool(before)


def test_a_long_evaluation_does_not_hold_the_gil(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    """While one thread evaluates a slow policy, Python code keeps running in another."""
    e = engine_for(backend, request)
    try:
        e.load_policy(
            "slow",
            "package slow\nr := numbers.range(1, 500)\n"
            "n := count([1 | some a in r; some b in r])\n",
        )
        done = threading.Event()
        result: list[Any] = []

        def evaluate() -> None:
            result.append(e.evaluate("data.slow.n"))
            done.set()

        t = threading.Thread(target=evaluate)
        t.start()
        ticks = 0
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)
        t.join(timeout=30)
        assert result == [250_000]
        # The evaluation takes tens of milliseconds or more: a thread holding the GIL for it
        # would leave this loop a handful of ticks.
        assert ticks >= 5, ticks
    finally:
        e.close()
