"""``Cache.aget_or_set``: single flight for asyncio tasks, on both backends.

``aget_or_set`` returns an awaitable (not necessarily a coroutine), so tasks are made from a small
``async def`` wrapper. Every wait is bounded with ``asyncio.wait_for`` so that a lost wake-up shows
up as a failure, not a hang.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sark_native import Cache
from sark_native.exceptions import CacheError

WAIT = 10.0


def make(backend: Any, **kwargs: Any) -> Cache:
    return Cache(backend=backend, **kwargs)


async def aload(c: Cache, key: Any, factory: Callable[[], Any], **kwargs: Any) -> Any:
    return await c.aget_or_set(key, factory, **kwargs)


def spawn(c: Cache, key: str, factory: Callable[[], Any]) -> asyncio.Task[Any]:
    return asyncio.create_task(aload(c, key, factory))


async def settle() -> None:
    """Give freshly created tasks time to reach their wait (several loop turns)."""
    await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_single_flight_over_tasks(backend: str) -> None:
    c = make(backend)
    calls = 0
    value = object()

    async def factory() -> object:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return value

    results = await asyncio.wait_for(
        asyncio.gather(*(aload(c, "k", factory) for _ in range(16))), WAIT
    )
    assert calls == 1
    assert all(r is value for r in results)
    assert c.get("k") is value


@pytest.mark.asyncio
async def test_single_flight_caches_none(backend: str) -> None:
    c = make(backend)
    calls = 0

    async def factory() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)

    results = await asyncio.wait_for(
        asyncio.gather(*(aload(c, "k", factory) for _ in range(8))), WAIT
    )
    assert results == [None] * 8
    assert calls == 1
    assert "k" in c
    assert await aload(c, "k", factory) is None
    assert calls == 1


@pytest.mark.asyncio
async def test_hit_returns_without_calling_the_factory(backend: str) -> None:
    c = make(backend)
    value = object()
    c.set("k", value)
    calls = 0

    def factory() -> Awaitable[object]:
        nonlocal calls
        calls += 1
        raise AssertionError("the factory must not run on a hit")

    assert await asyncio.wait_for(aload(c, "k", factory), WAIT) is value
    assert calls == 0


@pytest.mark.asyncio
async def test_second_call_is_a_hit(backend: str) -> None:
    c = make(backend)
    calls = 0

    async def factory() -> list[int]:
        nonlocal calls
        calls += 1
        return [calls]

    first = await aload(c, "k", factory)
    second = await aload(c, "k", factory)
    assert first is second
    assert first == [1]
    assert calls == 1


class LoadFailed(Exception):
    pass


@pytest.mark.asyncio
async def test_exception_reaches_every_waiter_and_nothing_is_cached(backend: str) -> None:
    c = make(backend)
    calls = 0

    async def failing() -> object:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise LoadFailed("backend down")

    results = await asyncio.wait_for(
        asyncio.gather(*(aload(c, "k", failing) for _ in range(8)), return_exceptions=True),
        WAIT,
    )
    assert calls == 1
    assert all(isinstance(r, LoadFailed) for r in results), results
    assert all(str(r) == "backend down" for r in results)
    assert "k" not in c
    assert len(c) == 0

    async def working() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    assert await aload(c, "k", working) == "ok"
    assert calls == 2
    assert c.get("k") == "ok"


@pytest.mark.asyncio
async def test_reentering_own_key_raises_cache_error(backend: str) -> None:
    c = make(backend)

    async def inner() -> str:
        return "inner"

    async def factory() -> object:
        return await c.aget_or_set("k", inner)

    with pytest.raises(CacheError):
        await asyncio.wait_for(aload(c, "k", factory), WAIT)
    assert "k" not in c
    assert await asyncio.wait_for(aload(c, "k", inner), WAIT) == "inner"


@pytest.mark.asyncio
async def test_factory_may_load_another_key(backend: str) -> None:
    c = make(backend)

    async def inner() -> str:
        return "inner"

    async def outer() -> tuple[str, object]:
        return ("outer", await c.aget_or_set("other", inner))

    assert await asyncio.wait_for(aload(c, "k", outer), WAIT) == ("outer", "inner")
    assert c.get("other") == "inner"


@pytest.mark.asyncio
async def test_cancelled_loader_hands_over_to_the_next_waiter(backend: str) -> None:
    c = make(backend)
    calls = 0
    started = asyncio.Event()
    value = object()

    async def factory() -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            await asyncio.Event().wait()  # never set: this load only ends by cancellation
        return value

    loader = spawn(c, "k", factory)
    await asyncio.wait_for(started.wait(), WAIT)
    waiters = [spawn(c, "k", factory) for _ in range(4)]
    await settle()
    assert calls == 1, "a waiter ran the factory while the first load was in progress"
    loader.cancel()
    results = await asyncio.wait_for(asyncio.gather(*waiters), WAIT)
    assert all(r is value for r in results)
    assert calls == 2
    with pytest.raises(asyncio.CancelledError):
        await loader
    assert c.get("k") is value


@pytest.mark.asyncio
async def test_cancelled_loader_without_waiters_caches_nothing(backend: str) -> None:
    c = make(backend)
    started = asyncio.Event()

    async def hanging() -> object:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    loader = spawn(c, "k", hanging)
    await asyncio.wait_for(started.wait(), WAIT)
    loader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loader
    assert "k" not in c

    async def quick() -> str:
        return "v"

    assert await asyncio.wait_for(aload(c, "k", quick), WAIT) == "v"


@pytest.mark.asyncio
async def test_waiters_left_after_a_cancellation_still_get_the_exception(backend: str) -> None:
    c = make(backend)
    gate = asyncio.Event()
    calls = 0

    async def failing() -> object:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise LoadFailed("late failure")

    loader = spawn(c, "k", failing)
    await settle()
    waiters = [spawn(c, "k", failing) for _ in range(3)]
    await settle()
    waiters[0].cancel()
    await settle()
    gate.set()
    results = await asyncio.wait_for(
        asyncio.gather(loader, waiters[1], waiters[2], return_exceptions=True), WAIT
    )
    assert all(isinstance(r, LoadFailed) for r in results), results
    assert calls == 1
    assert waiters[0].cancelled()
    assert "k" not in c


@pytest.mark.asyncio
async def test_same_key_in_another_cache_is_not_reentrance(backend: str) -> None:
    first = make(backend)
    second = make(backend)

    async def inner() -> str:
        return "inner"

    async def outer() -> tuple[str, object]:
        return ("outer", await second.aget_or_set("k", inner))

    assert await asyncio.wait_for(aload(first, "k", outer), WAIT) == ("outer", "inner")
    assert second.get("k") == "inner"


@pytest.mark.asyncio
async def test_cancelled_waiter_does_not_disturb_the_others(backend: str) -> None:
    c = make(backend)
    calls = 0
    gate = asyncio.Event()
    value = object()

    async def factory() -> object:
        nonlocal calls
        calls += 1
        await gate.wait()
        return value

    loader = spawn(c, "k", factory)
    await settle()
    waiters = [spawn(c, "k", factory) for _ in range(4)]
    await settle()
    waiters[1].cancel()
    await settle()
    gate.set()
    survivors = [loader, waiters[0], waiters[2], waiters[3]]
    results = await asyncio.wait_for(asyncio.gather(*survivors), WAIT)
    assert all(r is value for r in results)
    assert calls == 1
    with pytest.raises(asyncio.CancelledError):
        await waiters[1]
    assert c.get("k") is value


@pytest.mark.asyncio
async def test_sync_factory_returning_a_plain_value_is_accepted(backend: str) -> None:
    c = make(backend)
    value = {"plain": True}
    calls = 0

    def factory() -> dict[str, bool]:
        nonlocal calls
        calls += 1
        return value

    assert await asyncio.wait_for(aload(c, "k", factory), WAIT) is value
    assert await asyncio.wait_for(aload(c, "k", factory), WAIT) is value
    assert calls == 1
    assert c.get("k") is value
    assert await asyncio.wait_for(aload(c, "none", lambda: None), WAIT) is None
    assert "none" in c


@pytest.mark.asyncio
async def test_factory_returning_a_future_is_awaited(backend: str) -> None:
    c = make(backend)
    loop = asyncio.get_running_loop()
    value = object()

    def factory() -> asyncio.Future[object]:
        fut: asyncio.Future[object] = loop.create_future()
        loop.call_later(0.01, fut.set_result, value)
        return fut

    assert await asyncio.wait_for(aload(c, "k", factory), WAIT) is value
    assert c.get("k") is value


@pytest.mark.asyncio
async def test_aget_or_set_with_ttl(backend: str) -> None:
    c = make(backend, ttl=None)
    calls = 0

    async def factory() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await aload(c, "k", factory, ttl=0.05) == 1
    remaining = c.expires_in("k")
    assert remaining is not None
    assert remaining <= 0.05
    await asyncio.sleep(0.2)
    assert "k" not in c
    assert await aload(c, "k", factory) == 2
    assert c.expires_in("k") is None


@pytest.mark.asyncio
@pytest.mark.parametrize("key", [1, b"key", None, ("key",)], ids=lambda k: type(k).__name__)
async def test_non_str_key_raises_type_error(backend: str, key: object) -> None:
    c = make(backend)
    c.set("a", 1)

    async def factory() -> str:
        raise AssertionError("the factory must not run on bad input")

    with pytest.raises(TypeError):
        await aload(c, key, factory)
    assert c.get("a") == 1
    assert await aload(c, "b", lambda: 2) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("ttl", [-1, 0, float("nan"), float("inf")], ids=repr)
async def test_bad_ttl_raises_value_error(backend: str, ttl: float) -> None:
    c = make(backend)

    async def factory() -> str:
        return "v"

    with pytest.raises(ValueError, match="ttl"):
        await aload(c, "k", factory, ttl=ttl)
    assert "k" not in c
    assert await aload(c, "k", factory) == "v"


@pytest.mark.asyncio
async def test_different_keys_load_concurrently(backend: str) -> None:
    c = make(backend)
    n = 6
    running = 0
    all_running = asyncio.Event()

    async def factory(i: int) -> str:
        nonlocal running
        running += 1
        if running == n:
            all_running.set()
        await asyncio.wait_for(all_running.wait(), WAIT)
        return f"v{i}"

    def bound(i: int) -> Callable[[], Awaitable[str]]:
        return lambda: factory(i)

    results = await asyncio.wait_for(
        asyncio.gather(*(aload(c, f"k{i}", bound(i)) for i in range(n))), WAIT
    )
    assert results == [f"v{i}" for i in range(n)]


@pytest.mark.asyncio
async def test_a_thread_never_waits_on_an_asyncio_load(backend: str) -> None:
    c = make(backend)
    gate = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await gate.wait()
        return "async"

    task = spawn(c, "k", slow)
    await asyncio.wait_for(started.wait(), WAIT)
    try:
        from_thread = await asyncio.wait_for(
            asyncio.to_thread(c.get_or_set, "k", lambda: "thread"), WAIT
        )
        assert not task.done()
    finally:
        gate.set()
    assert from_thread == "thread"
    assert await asyncio.wait_for(task, WAIT) in ("async", "thread")
    assert c.get("k") in ("async", "thread")


@pytest.mark.asyncio
async def test_a_task_never_waits_on_a_thread_load(backend: str) -> None:
    c = make(backend)
    started = threading.Event()
    release = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(WAIT)
        return "thread"

    thread_result: list[object] = []
    thread = threading.Thread(
        target=lambda: thread_result.append(c.get_or_set("k", slow)), daemon=True
    )
    thread.start()
    # A task that wrongly waited on the thread's load would block the loop itself, which
    # wait_for could not interrupt; this timer ends that wait so the test fails instead of hanging.
    failsafe = threading.Timer(5.0, release.set)
    failsafe.start()
    try:
        assert await asyncio.to_thread(started.wait, WAIT)

        async def fast() -> str:
            return "task"

        t0 = time.monotonic()
        got = await asyncio.wait_for(aload(c, "k", fast), WAIT)
        released_early = release.is_set()
        elapsed = time.monotonic() - t0
    finally:
        release.set()
        failsafe.cancel()
        await asyncio.to_thread(thread.join, WAIT)
    assert not released_early, f"the task waited for the thread's load ({elapsed:.1f} s)"
    assert got == "task"
    assert thread_result == ["thread"]


def test_event_loops_in_different_threads_load_independently(backend: str) -> None:
    # Single flight is per event loop: a task never waits on another loop's load (awaiting a
    # future of another loop would fail), and each loop gets a value.
    c = make(backend)
    n = 4
    inside = threading.Barrier(n)
    results: list[object] = [None] * n

    def run_loop(i: int) -> None:
        async def factory() -> str:
            # Every loop's loader runs at the same time: no loop waited on another.
            await asyncio.to_thread(inside.wait, WAIT)
            return f"loop{i}"

        try:
            results[i] = asyncio.run(aload(c, "k", factory))
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run_loop, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert not any(t.is_alive() for t in threads)
    assert results == [f"loop{i}" for i in range(n)]
    assert c.get("k") in results
