"""The cashews backend (``sark_native.contrib.cashews``), exercised through cashews itself.

Every test runs on both Cache backends (the ``backend`` fixture). The cashews side is a fresh
``cashews.Cache`` per test, set up with ``sark://`` on a Cache the test can inspect directly.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterable
from typing import Any, cast

import pytest
from cashews import Cache as Cashews
from cashews import LockedError, RateLimitError
from cashews.backends.interface import NOT_EXIST, UNLIMITED, Backend
from cashews.backends.memory import Memory
from cashews.wrapper.backend_settings import settings_url_parse

from sark_native import Cache
from sark_native._backend import BackendChoice
from sark_native.contrib.cashews import DEFAULT_MAX_SIZE, SCHEME, SarkNativeBackend

# Timing: entries live SHORT seconds and the tests wait LONG before checking they are gone.
SHORT = 0.2
LONG = 0.5


def make(backend: str, max_size: int = 100, ttl: float | None = None) -> Cache:
    return Cache(max_size=max_size, ttl=ttl, backend=cast(BackendChoice, backend))


@pytest.fixture
def store(backend: str) -> Cache:
    return make(backend)


@pytest.fixture
def cache(store: Cache) -> Cashews:
    wrapper = Cashews(name="test")
    wrapper.setup("sark://", cache=store)
    return wrapper


def _sark(wrapper: Cashews, key: str = "") -> SarkNativeBackend:
    found = wrapper._get_backend(key)
    assert isinstance(found, SarkNativeBackend)
    return found


# --- setup --------------------------------------------------------------------------------------


def test_scheme_is_registered() -> None:
    backend_class, params, _ = settings_url_parse("sark://?max_size=10000")
    assert SCHEME == "sark"
    assert backend_class is SarkNativeBackend
    assert params == {"max_size": 10000}


def test_url_builds_a_cache(backend: str) -> None:
    wrapper = Cashews()
    made = wrapper.setup(f"sark://?max_size=7&backend={backend}&name=cw")
    assert isinstance(made, SarkNativeBackend)
    assert isinstance(made.cache, Cache)
    assert made.cache.max_size == 7
    assert made.cache.ttl is None
    assert made.cache.backend == backend
    assert made.cache.name == "cw"
    assert _sark(wrapper) is made


def test_url_defaults_and_memory_compatible_params(backend: str) -> None:
    made = Cashews().setup(f"sark://?backend={backend}")
    assert isinstance(made, SarkNativeBackend)
    assert made.cache.max_size == DEFAULT_MAX_SIZE
    assert made.cache.name == "cashews"
    # A mem:// URL's parameters keep working: size is max_size, check_interval is ignored.
    compat = Cashews().setup(f"sark://?size=3&check_interval=1&backend={backend}")
    assert isinstance(compat, SarkNativeBackend)
    assert compat.cache.max_size == 3


def test_existing_cache_is_used(store: Cache) -> None:
    made = Cashews().setup("sark://", cache=store)
    assert isinstance(made, SarkNativeBackend)
    assert made.cache is store


def test_bad_arguments(store: Cache) -> None:
    with pytest.raises(ValueError, match="not both"):
        SarkNativeBackend(max_size=3, size=4)
    with pytest.raises(ValueError, match="not both"):
        SarkNativeBackend(store, max_size=3)
    with pytest.raises(TypeError, match=r"sark_native\.Cache"):
        SarkNativeBackend({})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Cashews().setup("sark://?max_size=3&bogus=1")
    with pytest.raises(ValueError, match="max_size"):
        Cashews().setup("sark://?max_size=0")
    with pytest.raises(ValueError, match="fortran"):
        Cashews().setup("sark://?backend=fortran")


@pytest.mark.asyncio
async def test_init_and_close(cache: Cashews, store: Cache) -> None:
    sark = _sark(cache)
    assert not sark.is_init
    await cache.init()
    assert sark.is_init
    await cache.set("k", 1)
    await cache.close()
    assert not sark.is_init
    assert store.get("k") == 1  # closing keeps the entries, as Memory does
    await cache.set("k", 2)  # cashews initialises the backend again on use
    assert sark.is_init


# --- the decorator ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_decorator_caches_through_the_backend(cache: Cashews, store: Cache) -> None:
    calls: list[int] = []

    @cache(ttl="1m")
    async def load(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    first = await load(1)
    again = await load(1)
    assert first == {"id": 1}
    assert again is first  # stored by reference: no copy, no pickling
    assert calls == [1]
    assert await load(2) == {"id": 2}
    assert calls == [1, 2]
    keys = store.keys()
    assert len(keys) == 2
    assert all(key.endswith(("user_id:1", "user_id:2")) for key in keys)
    for key in keys:
        left = store.expires_in(key)
        assert left is not None
        assert 55 < left <= 60
        assert await cache.get_expire(key) == 60


@pytest.mark.asyncio
async def test_decorator_entry_expires(cache: Cashews) -> None:
    calls = 0

    @cache(ttl=SHORT)
    async def compute() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await compute() == 1
    assert await compute() == 1
    await asyncio.sleep(LONG)
    assert await compute() == 2
    assert calls == 2


@pytest.mark.asyncio
async def test_decorator_invalidation_by_delete_match(cache: Cashews, store: Cache) -> None:
    calls = 0

    @cache(ttl="1m", key="item:{item_id}")
    async def item(item_id: int) -> int:
        nonlocal calls
        calls += 1
        return item_id * 10

    assert await item(1) == 10
    assert await item(2) == 20
    assert sorted(store.keys()) == ["item:1", "item:2"]
    await cache.delete_match("item:*")
    assert store.keys() == []
    assert await item(1) == 10
    assert calls == 3


@pytest.mark.asyncio
async def test_rate_limit_decorator(cache: Cashews, store: Cache) -> None:
    @cache.rate_limit(limit=2, period="1m", key="rl")
    async def ping() -> str:
        return "ok"

    assert await ping() == "ok"
    assert await ping() == "ok"
    with pytest.raises(RateLimitError):
        await ping()
    assert store.keys() == ["rate_limit:rl"]
    assert store.get("rate_limit:rl") == 3
    left = store.expires_in("rate_limit:rl")
    assert left is not None
    assert 55 < left <= 60


@pytest.mark.asyncio
async def test_locked_decorator_runs_one_call_at_a_time(cache: Cashews, store: Cache) -> None:
    running = 0
    peak = 0

    @cache.locked(ttl="1m", key="job")
    async def job() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    await asyncio.gather(*(job() for _ in range(5)))
    assert peak == 1
    assert store.keys() == []  # every lock was released


# --- get / set / delete -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_set_delete_exists(cache: Cashews, store: Cache) -> None:
    value: dict[str, list[int]] = {"items": [1]}
    assert await cache.set("k", value) is True
    got = await cache.get("k")
    assert got is value  # by reference (Memory would return a shallow copy)
    value["items"].append(2)
    assert await cache.get("k") == {"items": [1, 2]}
    assert store.get("k") is value
    assert await cache.exists("k") is True
    assert await cache.get("missing") is None
    assert await cache.get("missing", default="d") == "d"
    await cache.set("none", None)
    assert await cache.get("none", default="d") is None  # None is a value
    assert await cache.delete("k") is True
    assert await cache.delete("k") is False
    assert await cache.exists("k") is False
    assert await cache.get("k", default="gone") == "gone"


@pytest.mark.asyncio
async def test_set_exist_flags(cache: Cashews, store: Cache) -> None:
    assert await cache.set("k", 1, exist=True) is False
    assert "k" not in store
    assert await cache.set("k", 1, exist=False) is True
    assert await cache.set("k", 2, exist=False) is False
    assert await cache.get("k") == 1
    assert await cache.set("k", 3, exist=True) is True
    assert await cache.get("k") == 3
    # An expired entry does not count as existing.
    await cache.set("short", 1, expire=SHORT)
    await asyncio.sleep(LONG)
    assert await cache.set("short", 2, exist=True) is False
    assert await cache.set("short", 2, exist=False) is True
    assert await cache.get("short") == 2
    assert await cache.get_expire("short") == UNLIMITED


@pytest.mark.asyncio
async def test_set_many_get_many(cache: Cashews, store: Cache) -> None:
    shared = object()
    await cache.set_many({"a": 1, "b": shared, "c": None}, expire=60)
    assert await cache.get_many("a", "b", "missing", "c") == (1, shared, None, None)
    values = await cache.get_many("a", "missing", default="d")
    assert values == (1, "d")
    assert (await cache.get_many("b"))[0] is shared
    for key in "abc":
        assert await cache.get_expire(key) == 60


@pytest.mark.asyncio
async def test_raw_size_ping_count_clear(cache: Cashews, store: Cache) -> None:
    await cache.set_raw("raw", b"123")
    assert await cache.get_raw("raw") == b"123"
    assert store.get("raw") == b"123"  # no serializer in between
    assert await cache.get_raw("missing") is None
    await cache.set("big", "x" * 10_000)
    assert await cache.get_size("big") > 10_000
    assert await cache.get_size("missing") == 0
    assert await cache.ping() == b"PONG"
    assert await cache.ping(b"hello") == b"hello"
    assert await cache.get_keys_count() == 2
    await cache.clear()
    assert await cache.get_keys_count() == 0
    assert len(store) == 0


@pytest.mark.asyncio
async def test_bytes_values_round_trip(cache: Cashews) -> None:
    # cashews' null serializer tags bytes on the way in and strips the tag on the way out.
    await cache.set("b", b"123")
    assert await cache.get("b") == b"123"


@pytest.mark.asyncio
async def test_serializer_options_are_honoured(store: Cache) -> None:
    wrapper = Cashews()
    wrapper.setup("sark://?secret=s3cret&pickle_type=default", cache=store)
    value = {"a": [1, 2]}
    await wrapper.set("k", value)
    stored = store.get("k")
    assert isinstance(stored, bytes)  # pickled and signed by cashews
    got = await wrapper.get("k")
    assert got == value
    assert got is not value
    store.set("k", b"md5:forged_" + stored.split(b"_", 1)[1])
    with pytest.raises(Exception, match="!="):
        await wrapper.get("k")


@pytest.mark.asyncio
async def test_lru_eviction(backend: str) -> None:
    small = make(backend, max_size=3)
    wrapper = Cashews()
    wrapper.setup("sark://", cache=small)
    for key in ("a", "b", "c"):
        await wrapper.set(key, key)
    assert await wrapper.get("a") == "a"  # "a" is now the most recently used
    await wrapper.set("d", "d")
    assert sorted(small.keys()) == ["a", "c", "d"]  # "b" was the least recently used
    assert await wrapper.get_keys_count() == 3


# --- expiry -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ttl_expiry(cache: Cashews, store: Cache) -> None:
    await cache.set("short", "v", expire=SHORT)
    await cache.set("long", "v", expire=60)
    await cache.set("forever", "v")
    assert await cache.get("short") == "v"
    await asyncio.sleep(LONG)
    assert await cache.get("short") is None
    assert await cache.exists("short") is False
    assert await cache.get_expire("short") == NOT_EXIST
    assert "short" not in store
    assert await cache.get("long") == "v"
    assert await cache.get("forever") == "v"


@pytest.mark.asyncio
async def test_get_expire_conventions(cache: Cashews) -> None:
    assert await cache.get_expire("missing") == NOT_EXIST == -2
    await cache.set("forever", 1)
    assert await cache.get_expire("forever") == UNLIMITED == -1
    await cache.set("ten", 1, expire=10)
    assert await cache.get_expire("ten") == 10
    await cache.set("td", 1, expire="1m")
    assert await cache.get_expire("td") == 60


@pytest.mark.asyncio
async def test_expire_command(cache: Cashews, store: Cache) -> None:
    await cache.set("k", 1)
    await cache.expire("k", 30)
    assert await cache.get_expire("k") == 30
    await cache.expire("k", 0)  # a falsy timeout keeps the deadline (Memory)
    assert await cache.get_expire("k") == 30
    await cache.expire("k", SHORT)
    await asyncio.sleep(LONG)
    assert await cache.get("k") is None
    await cache.expire("missing", 10)  # no entry is created
    assert await cache.exists("missing") is False
    await cache.set("neg", 1)
    await cache.expire("neg", -1)  # a deadline in the past
    assert await cache.exists("neg") is False
    assert "neg" not in store


@pytest.mark.asyncio
async def test_set_without_expire_keeps_the_deadline(cache: Cashews) -> None:
    # Memory's rule: a write without expire keeps an existing entry's deadline.
    await cache.set("k", 1, expire=30)
    await cache.set("k", 2)
    assert await cache.get("k") == 2
    assert await cache.get_expire("k") == 30
    await cache.set("k", 3, expire=10)  # an explicit expire replaces it
    assert await cache.get_expire("k") == 10
    await cache.set("k", 4, expire=0)  # 0 counts as "no expire"
    assert await cache.get_expire("k") == 10
    await cache.set("neg", 1, expire=-1)  # already expired: not stored
    assert await cache.exists("neg") is False


@pytest.mark.asyncio
async def test_cache_default_ttl_applies_without_expire(backend: str) -> None:
    default_ttl = make(backend, max_size=10, ttl=30.0)
    wrapper = Cashews()
    wrapper.setup("sark://", cache=default_ttl)
    await wrapper.set("k", 1)
    assert await wrapper.get_expire("k") == 30
    await wrapper.set("k", 1, expire=5)
    assert await wrapper.get_expire("k") == 5


# --- counters -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_incr(cache: Cashews, store: Cache) -> None:
    assert await cache.incr("n", expire=30) == 1
    assert await cache.get_expire("n") == 30
    assert await cache.incr("n") == 2
    assert await cache.incr("n", 5, expire=5) == 7  # an existing counter keeps its deadline
    assert await cache.get_expire("n") == 30
    assert await cache.incr("n", -7) == 0
    assert await cache.get("n") == 0
    assert store.get("n") == 0
    assert await cache.incr("plain") == 1
    assert await cache.get_expire("plain") == UNLIMITED
    assert await cache.incr("five", 5, expire=30) == 5  # a new counter gets its deadline
    assert await cache.get_expire("five") == 30
    await cache.set("text", "41")
    assert await cache.incr("text") == 42


@pytest.mark.asyncio
async def test_incr_counter_expires(cache: Cashews) -> None:
    assert await cache.incr("n", expire=SHORT) == 1
    assert await cache.incr("n") == 2
    await asyncio.sleep(LONG)
    assert await cache.get("n") is None
    assert await cache.incr("n", expire=60) == 1


@pytest.mark.asyncio
async def test_concurrent_incr_tasks(cache: Cashews) -> None:
    results = await asyncio.gather(*(cache.incr("n") for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await cache.get("n") == 200


def test_incr_is_atomic_across_threads(store: Cache) -> None:
    sark = SarkNativeBackend(store)
    per_thread, threads = 500, 4
    errors: list[BaseException] = []

    async def hammer(name: str) -> None:
        for i in range(per_thread):
            await sark.incr("n")
            await sark.set_add("members", f"{name}:{i}")

    def run(name: str) -> None:
        try:
            asyncio.run(hammer(name))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, inside read-modify-write steps too
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert store.get("n") == per_thread * threads
    assert len(store.get("members")) == per_thread * threads


@pytest.mark.asyncio
async def test_bits(cache: Cashews) -> None:
    assert await cache.get_bits("bits", 0, 3) == (0, 0)
    assert await cache.incr_bits("bits", 0, 3) == (1, 1)
    assert await cache.incr_bits("bits", 3, by=1) == (1,)  # one bit saturates at 1
    assert await cache.get_bits("bits", 0, 1, 3) == (1, 0, 1)
    assert await cache.incr_bits("wide", 2, size=4, by=5) == (5,)
    assert await cache.incr_bits("wide", 2, size=4, by=5) == (10,)
    assert await cache.get_bits("wide", 2, size=4) == (10,)
    # A bit array is not a value: get_many reads it as missing (Memory drops it, misaligning
    # the answer).
    await cache.set("plain", 1)
    assert await cache.get_many("bits", "plain", "missing") == (None, 1, None)


@pytest.mark.asyncio
async def test_slice_incr_and_slice_rate_limit(cache: Cashews) -> None:
    assert await cache.slice_incr("s", 0, 10, maxvalue=2, expire=30) == 1
    assert await cache.slice_incr("s", 5, 15, maxvalue=2) == 2
    assert await cache.slice_incr("s", 10, 20, maxvalue=2) == 2  # limit reached: not added
    assert await cache.slice_incr("s", 12, 22, maxvalue=2) == 2  # 10 slid out, 15 kept
    assert await cache.slice_incr("s", 30, 40, maxvalue=2) == 1  # everything slid out
    assert await cache.get_expire("s") == 30

    @cache.slice_rate_limit(limit=2, period="1m", key="srl")
    async def call() -> str:
        return "ok"

    assert await call() == "ok"
    assert await call() == "ok"
    with pytest.raises(RateLimitError):
        await call()


# --- sets and tags ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sets(cache: Cashews, store: Cache) -> None:
    await cache.set_add("s", "a", "b", "c", expire=30)
    assert store.get("s") == {"a", "b", "c"}
    assert await cache.get_expire("s") == 30
    await cache.set_remove("s", "b", "zzz")
    assert store.get("s") == {"a", "c"}
    popped = list(await cache.set_pop("s", count=1))
    assert len(popped) == 1
    assert popped[0] in {"a", "c"}
    rest = list(await cache.set_pop("s", count=10))
    assert sorted(popped + rest) == ["a", "c"]
    assert list(await cache.set_pop("s")) == []
    assert list(await cache.set_pop("missing")) == []
    assert await cache.get_expire("s") == 30  # set_remove/set_pop keep the deadline


@pytest.mark.asyncio
async def test_tags(cache: Cashews, store: Cache) -> None:
    cache.register_tag("users", "user:{user_id}")
    await cache.set("user:1", "a", tags=["users"])
    await cache.set("user:2", "b", tags=["users"])
    await cache.set("other", "c")
    assert store.get("_tag:users") == {"user:1", "user:2"}
    # A delete reaches the tag index through the on_remove callback.
    await cache.delete("user:1")
    assert store.get("_tag:users") == {"user:2"}
    await cache.set("user:3", "d", tags=["users"])
    await cache.delete_tags("users")
    assert sorted(store.keys()) == ["_tag:users", "other"]
    assert store.get("_tag:users") == set()


@pytest.mark.asyncio
async def test_on_remove_callbacks_receive_deleted_keys(cache: Cashews, store: Cache) -> None:
    removed: list[str] = []

    async def record(keys: Iterable[str], backend: Backend) -> None:
        assert isinstance(backend, SarkNativeBackend)
        removed.extend(keys)

    _sark(cache).on_remove_callback(record)
    for key in ("p:1", "p:2", "q:1", "q:2", "r:1", "r:2"):
        await cache.set(key, 1)
    await cache.delete("p:1")
    await cache.delete("p:1")  # nothing removed: no callback
    await cache.delete_many("p:2", "missing")
    await cache.delete_match("q:*")  # a prefix: Cache.delete_prefix
    await cache.delete_match("r:[1]")  # a glob
    assert sorted(removed) == ["p:1", "p:2", "q:1", "q:2", "r:1"]
    assert sorted(store.keys()) == ["r:2"]


# --- patterns -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_scan_get_match_delete_match(cache: Cashews, store: Cache) -> None:
    for key in ("user:1", "user:2", "user:10", "userx", "a.b1", "axb1", "star*", "other"):
        await cache.set(key, key.upper())

    async def scan(pattern: str) -> list[str]:
        return sorted([key async for key in cache.scan(pattern)])

    assert await scan("user:*") == ["user:1", "user:10", "user:2"]
    assert await scan("user:?") == ["user:1", "user:2"]
    assert await scan("user:[12]") == ["user:1", "user:2"]
    assert await scan("user:[^1]") == ["user:2"]
    assert await scan("user:[0-1]*") == ["user:1", "user:10"]
    assert await scan("*1") == ["a.b1", "axb1", "user:1"]
    assert await scan("a.b*") == ["a.b1"]  # "." is literal, not a regex wildcard
    assert await scan("star\\*") == ["star*"]
    assert await scan("user") == []
    assert await scan("*") == sorted(store.keys())
    matched = sorted([(key, value) async for key, value in cache.get_match("user:1*")])
    assert matched == [("user:1", "USER:1"), ("user:10", "USER:10")]

    await cache.delete_match("user:*")
    assert sorted(store.keys()) == ["a.b1", "axb1", "other", "star*", "userx"]
    await cache.delete_match("a?b1")
    assert sorted(store.keys()) == ["other", "star*", "userx"]
    await cache.delete_match("*")
    assert store.keys() == []


@pytest.mark.asyncio
async def test_get_match_skips_expired_entries(cache: Cashews) -> None:
    await cache.set("m:1", 1, expire=SHORT)
    await cache.set("m:2", 2)
    await asyncio.sleep(LONG)
    assert [pair async for pair in cache.get_match("m:*")] == [("m:2", 2)]
    assert [key async for key in cache.scan("m:*")] == ["m:2"]


# --- locks --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_lock_commands(cache: Cashews, store: Cache) -> None:
    assert await cache.set_lock("lock", "me", expire=30) is True
    assert await cache.set_lock("lock", "you", expire=30) is False
    assert await cache.is_locked("lock") is True
    assert await cache.get_expire("lock") == 30
    assert await cache.unlock("lock", "you") is False  # only the owner releases it
    assert await cache.is_locked("lock") is True
    assert await cache.unlock("lock", "me") is True
    assert await cache.is_locked("lock") is False
    assert await cache.unlock("lock", "me") is False
    assert await cache.set_lock("lock", "you", expire=30) is True
    assert store.get("lock") == "you"


@pytest.mark.asyncio
async def test_lock_expires(cache: Cashews) -> None:
    assert await cache.set_lock("lock", "me", expire=SHORT) is True
    assert await cache.is_locked("lock", wait=LONG * 2, step=0.05) is False  # it expired
    assert await cache.set_lock("lock", "you", expire=30) is True
    assert await cache.is_locked("lock", wait=0.1, step=0.05) is True


@pytest.mark.asyncio
async def test_lock_context_manager(cache: Cashews) -> None:
    async with cache.lock("job", expire=30):
        assert await cache.is_locked("job") is True
        with pytest.raises(LockedError):
            async with cache.lock("job", expire=30, wait=False):
                pytest.fail("the lock is held")  # pragma: no cover
    assert await cache.is_locked("job") is False


# --- cashews features around the backend --------------------------------------------------------


@pytest.mark.asyncio
async def test_prefix_routes_hot_keys_to_sark(store: Cache) -> None:
    wrapper = Cashews()
    wrapper.setup("mem://?check_interval=0")
    wrapper.setup("sark://", prefix="hot:", cache=store)
    await wrapper.set("hot:a", 1)
    await wrapper.set("cold:b", 2)
    assert store.keys() == ["hot:a"]
    assert await wrapper.get("hot:a") == 1
    assert await wrapper.get("cold:b") == 2
    memory = wrapper._get_backend("cold:b")
    assert isinstance(memory, Memory)
    assert await memory.get("cold:b") == 2


@pytest.mark.asyncio
async def test_transaction_commits_and_rolls_back(cache: Cashews, store: Cache) -> None:
    await cache.set("gone", 1)
    async with cache.transaction():
        await cache.set("a", 1, expire=60)
        await cache.set("b", 2)
        await cache.delete("gone")
        assert await cache.get("a") == 1
        assert "a" not in store  # not written before the commit
        assert "gone" in store
    assert store.get("a") == 1
    assert store.get("b") == 2
    assert "gone" not in store
    assert 55 <= await cache.get_expire("a") <= 60
    assert await cache.get_expire("b") == UNLIMITED

    class Boom(Exception):
        pass

    async def fail_midway() -> None:
        async with cache.transaction():
            await cache.set("c", 3)
            raise Boom

    with pytest.raises(Boom):
        await fail_midway()
    assert "c" not in store


@pytest.mark.asyncio
async def test_disabled_cache_does_not_store(store: Cache) -> None:
    wrapper = Cashews()
    wrapper.setup("sark://?disable=1", cache=store)
    calls = 0

    @wrapper(ttl="1m")
    async def compute() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await compute() == 1
    assert await compute() == 2
    assert len(store) == 0


@pytest.mark.asyncio
async def test_memory_and_sark_agree(backend: str) -> None:
    """The same command script gives the same answers on Memory and on this backend."""
    results: dict[str, list[Any]] = {}
    for url in ("mem://?check_interval=0", f"sark://?backend={backend}"):
        wrapper = Cashews()
        wrapper.setup(url)
        out: list[Any] = [
            await wrapper.set("a", 1, expire=30),
            await wrapper.set("a", 2, exist=False),
            await wrapper.set("b", "x"),
            await wrapper.get("a"),
            await wrapper.get("missing", default="d"),
            await wrapper.exists("b"),
            await wrapper.get_expire("a"),
            await wrapper.get_expire("b"),
            await wrapper.get_expire("missing"),
            await wrapper.incr("n", expire=10),
            await wrapper.incr("n", 2),
            await wrapper.get_expire("n"),
            await wrapper.get_many("a", "b", "missing"),
            sorted([key async for key in wrapper.scan("*")]),
            await wrapper.delete("b"),
            await wrapper.delete("b"),
            await wrapper.set_lock("l", "v", expire=10),
            await wrapper.set_lock("l", "w", expire=10),
            await wrapper.is_locked("l"),
            await wrapper.unlock("l", "v"),
            await wrapper.get_keys_count(),
            await wrapper.ping(),
        ]
        await wrapper.delete_match("*")
        out.append(await wrapper.get_keys_count())
        await wrapper.close()
        results[url.split(":")[0]] = out
    assert results["sark"] == results["mem"]


async def _decorator_scenario(url: str) -> list[Any]:
    wrapper = Cashews()
    wrapper.setup(url)
    calls = {"hit": 0, "soft": 0, "early": 0, "failover": 0}
    fail = False

    @wrapper.hit(ttl="1m", cache_hits=2, background=False)
    async def by_hits() -> int:
        calls["hit"] += 1
        return calls["hit"]

    @wrapper.soft(ttl="1m", soft_ttl="30s")
    async def soft() -> int:
        calls["soft"] += 1
        return calls["soft"]

    @wrapper.early(ttl="1m", early_ttl="30s")
    async def early() -> int:
        calls["early"] += 1
        return calls["early"]

    @wrapper.failover(ttl="1m")
    async def failover() -> int:
        calls["failover"] += 1
        if fail:
            raise RuntimeError("down")
        return calls["failover"]

    out: list[Any] = [await by_hits() for _ in range(5)]
    out += [await soft() for _ in range(3)]
    out += [await early() for _ in range(3)]
    out.append(await failover())
    fail = True
    out.append(await failover())  # served from the cache while the call fails
    out.append(dict(calls))
    await wrapper.close()
    return out


@pytest.mark.asyncio
async def test_decorators_agree_with_memory(backend: str) -> None:
    """cashews' hit, soft, early and failover decorators behave the same on Memory and here."""
    memory = await _decorator_scenario("mem://?check_interval=0")
    sark = await _decorator_scenario(f"sark://?backend={backend}")
    assert sark == memory
    assert sark[:5] == [1, 1, 1, 2, 2]  # recomputed after two hits
    assert sark[-1] == {"hit": 2, "soft": 1, "early": 1, "failover": 2}
    assert sark[-3:-1] == [1, 1]
