"""hash_async / verify_async: awaitables that resolve on the event loop without blocking it or
occupying a Python thread, and the bounded queue that sheds load with OverloadedError."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import argon2
import pytest

import sark_native
from sark_native import exceptions as ex
from sark_native._backend import Backend
from sark_native._fallback.hashing import DEFAULT_MAX_PENDING, default_workers


@pytest.fixture
def pool_settings() -> Iterator[None]:
    """Tests that resize the process-wide pool put the defaults back."""
    yield
    sark_native.configure(hash_workers=default_workers(), hash_max_pending=DEFAULT_MAX_PENDING)


@pytest.mark.asyncio
async def test_hash_and_verify_async(backend: Backend) -> None:
    h = sark_native.PasswordHasher(time_cost=1, memory_cost=64, backend=backend)
    phcs = await asyncio.gather(*(h.hash_async(f"pw{i}") for i in range(8)))
    assert len(set(phcs)) == 8
    assert all(await asyncio.gather(*(h.verify_async(p, f"pw{i}") for i, p in enumerate(phcs))))
    with pytest.raises(ex.VerifyMismatchError):
        await h.verify_async(phcs[0], "nope")
    with pytest.raises(ex.InvalidHashError):
        await h.verify_async("$argon2id$broken", "pw")
    assert argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).verify(phcs[1], "pw1")


@pytest.mark.asyncio
async def test_bad_input_raises_at_the_call(backend: Backend) -> None:
    h = sark_native.PasswordHasher(time_cost=1, memory_cost=64, backend=backend)
    with pytest.raises(TypeError):
        h.hash_async(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="4096"):
        h.hash_async("x" * 5000)
    with pytest.raises(TypeError):
        h.verify_async(None, "pw")  # type: ignore[arg-type]
    assert await h.verify_async(await h.hash_async("pw"), "pw")


def test_async_needs_a_running_loop(backend: Backend) -> None:
    h = sark_native.PasswordHasher(time_cost=1, memory_cost=64, backend=backend)
    with pytest.raises(RuntimeError):
        h.hash_async("pw")


@pytest.mark.asyncio
async def test_the_loop_keeps_ticking_while_hashes_run(backend: Backend) -> None:
    h = sark_native.PasswordHasher(time_cost=2, memory_cost=16384, backend=backend)
    started = time.perf_counter()
    h.hash("warm up")
    one = time.perf_counter() - started
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    threads = threading.active_count()
    futures = [h.hash_async(f"pw{i}") for i in range(4)]
    if backend == "rust":
        # The native workers are not Python threads, and no Python thread waits for them.
        assert threading.active_count() == threads
    await asyncio.gather(*futures)
    stop.set()
    await task
    assert len(gaps) > 5
    # A blocked loop would show a gap of at least one hash; generous bound for a shared machine.
    assert max(gaps) < max(one / 2, 0.02), (max(gaps), one)


@pytest.mark.asyncio
@pytest.mark.usefixtures("pool_settings")
async def test_a_full_queue_sheds_load_and_the_hasher_recovers(backend: Backend) -> None:
    sark_native.configure(hash_workers=1, hash_max_pending=2)
    h = sark_native.PasswordHasher(time_cost=2, memory_cost=8192, backend=backend)
    accepted = []
    rejected = 0
    for i in range(10):  # microseconds apart; each hash takes milliseconds
        try:
            accepted.append(h.hash_async(f"pw{i}"))
        except ex.OverloadedError:
            rejected += 1
    assert 2 <= len(accepted) <= 3
    assert rejected == 10 - len(accepted)
    assert all(p.startswith("$argon2id$") for p in await asyncio.gather(*accepted))
    assert await h.verify_async(await h.hash_async("again"), "again")


@pytest.mark.usefixtures("pool_settings")
def test_a_full_queue_sheds_sync_callers_too(backend: Backend) -> None:
    sark_native.configure(hash_workers=1, hash_max_pending=1)
    h = sark_native.PasswordHasher(time_cost=3, memory_cost=8192, backend=backend)
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def call() -> None:
        barrier.wait()
        try:
            h.hash("pw")
            outcomes.append("ok")
        except ex.OverloadedError:
            outcomes.append("shed")

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == 6
    assert outcomes.count("ok") >= 1
    assert h.verify(h.hash("pw"), "pw")


@pytest.mark.usefixtures("pool_settings")
def test_configure_validates(backend: Backend) -> None:
    for bad in ({"hash_workers": 0}, {"hash_workers": 1000}, {"hash_max_pending": 0}):
        with pytest.raises(ValueError, match="hash_"):
            sark_native.configure(**bad)
    with pytest.raises(TypeError):
        sark_native.configure(hash_workers="2")  # type: ignore[arg-type]
    sark_native.configure(hash_workers=1)
    h = sark_native.PasswordHasher(time_cost=1, memory_cost=64, backend=backend)
    assert h.verify(h.hash("pw"), "pw")


@pytest.mark.asyncio
async def test_a_cancelled_await_leaves_the_pool_working(backend: Backend) -> None:
    h = sark_native.PasswordHasher(time_cost=2, memory_cost=8192, backend=backend)
    fut = asyncio.ensure_future(h.hash_async("pw"))
    await asyncio.sleep(0)
    fut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fut
    assert await h.verify_async(await h.hash_async("pw"), "pw")
