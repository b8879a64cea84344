"""The contract of ``sark_native.Cache`` (docs/cache.md), checked on both backends.

Every behavioural test takes the ``backend`` fixture, so it runs once on the Rust cache and once
on the pure-Python twin. Timing is only ever used with generous margins: a ttl of 0.05 s and a
sleep several times longer; nothing here asserts speed.
"""

from __future__ import annotations

import gc
import math
import random
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import sark_native
from sark_native import Cache
from sark_native.exceptions import BackendUnavailableError, CacheError, SarkNativeError

STATS_KEYS = {"hits", "misses", "evictions", "expirations", "size", "max_size"}

#: A ttl short enough to expire quickly, and a sleep well past it (about 4x).
SHORT_TTL = 0.05
PAST_SHORT_TTL = 0.2

NON_STR_KEYS: list[Any] = [1, b"key", None, 1.5, ("key",), ["key"]]
BAD_TTL_VALUES: list[Any] = [-1, -0.5, 0, 0.0, -0.0, math.nan, math.inf, -math.inf]
NON_NUMBER_TTLS: list[Any] = [True, False, "1", b"1", [1]]


class Value:
    """A plain object that can be weakly referenced, to follow a value's lifetime."""

    def __init__(self, tag: object = None) -> None:
        self.tag = tag


def make(backend: Any, **kwargs: Any) -> Cache:
    return Cache(backend=backend, **kwargs)


def released(ref: weakref.ref[Any], cache: Cache) -> bool:
    """Whether the object behind ``ref`` was freed.

    One more call into the cache comes first: a native cache may drop a reference while the GIL
    is released, and PyO3 applies such deferred decrefs on the next call that attaches.
    """
    cache.get("__unrelated__")
    gc.collect()
    return ref() is None


def counters(cache: Cache) -> dict[str, int]:
    return dict(cache.stats())


# --- construction, attributes, backends ----------------------------------------------------------


def test_backend_attribute_and_isinstance(backend: str) -> None:
    c = make(backend)
    assert c.backend == backend
    assert isinstance(c, sark_native.Cache)
    assert isinstance(c, Cache)


def test_rust_cache_is_the_native_object(backend: str) -> None:
    # docs/cache.md: with the Rust backend there is no Python wrapper between a call and Rust.
    module = type(make(backend)).__module__
    if backend == "rust":
        assert module == "sark_native._native"
    else:
        assert module != "sark_native._native"


def test_auto_backend_picks_rust_when_available() -> None:
    c = Cache()
    assert c.backend == ("rust" if sark_native.RUST_AVAILABLE else "python")
    assert isinstance(c, Cache)


def test_rust_backend_is_served_or_refused_by_availability() -> None:
    if sark_native.RUST_AVAILABLE:
        assert Cache(backend="rust").backend == "rust"
    else:
        with pytest.raises(BackendUnavailableError):
            Cache(backend="rust")


def test_backends_live_side_by_side(backend: str) -> None:
    ours = make(backend, ttl=None)
    other = Cache(backend="python", ttl=None)
    ours.set("k", "ours")
    assert "k" not in other
    assert other.get("k") is None
    other.set("k", "other")
    assert ours.get("k") == "ours"


def test_defaults(backend: str) -> None:
    c = make(backend)
    assert c.max_size == 10_000
    assert c.ttl == 300.0
    assert c.name == "default"
    assert c.stats()["max_size"] == 10_000


def test_constructor_arguments_are_exposed(backend: str) -> None:
    c = make(backend, max_size=7, ttl=1.5, name="sessions")
    assert c.max_size == 7
    assert c.ttl == 1.5
    assert c.name == "sessions"
    assert c.stats()["max_size"] == 7


def test_ttl_none_in_constructor(backend: str) -> None:
    c = make(backend, ttl=None)
    assert c.ttl is None


def test_integer_ttl_is_accepted(backend: str) -> None:
    c = make(backend, ttl=2)
    assert c.ttl == 2
    c.set("k", 1, ttl=3)
    remaining = c.expires_in("k")
    assert remaining is not None
    assert 1.5 < remaining <= 3


@pytest.mark.parametrize("attr", ["max_size", "ttl", "name", "backend"])
def test_attributes_are_read_only(backend: str, attr: str) -> None:
    c = make(backend, max_size=5, ttl=1.0, name="n")
    before = getattr(c, attr)
    with pytest.raises(AttributeError):
        setattr(c, attr, before)
    assert getattr(c, attr) == before


def test_max_size_beyond_memory_is_accepted(backend: str) -> None:
    c = make(backend, max_size=2**100, ttl=None)
    assert c.max_size >= 2**62
    c.set("k", 1)
    assert c.get("k") == 1
    assert len(c) == 1


def test_no_preallocation_for_a_huge_max_size(backend: str) -> None:
    c = make(backend, max_size=1_000_000_000, ttl=None)
    c.set("k", 1)
    assert c.get("k") == 1
    assert len(c) == 1
    assert c.stats()["max_size"] == 1_000_000_000


# --- get / set / delete / clear ------------------------------------------------------------------


def test_get_missing_returns_default(backend: str) -> None:
    c = make(backend)
    assert c.get("missing") is None
    marker = object()
    assert c.get("missing", marker) is marker
    assert c.get("missing", default=marker) is marker


def test_set_get_returns_the_identical_object(backend: str) -> None:
    c = make(backend)
    value = Value("x")
    c.set("k", value)
    assert c.get("k") is value
    assert c.get("k", "default") is value


def test_values_are_stored_by_reference(backend: str) -> None:
    c = make(backend)
    value: list[int] = [1]
    c.set("k", value)
    value.append(2)
    got = c.get("k")
    assert got is value
    assert got == [1, 2]


def test_none_is_cached_like_any_value(backend: str) -> None:
    c = make(backend)
    c.set("k", None)
    assert "k" in c
    marker = object()
    before = counters(c)
    assert c.get("k", marker) is None
    after = counters(c)
    assert after["hits"] == before["hits"] + 1
    assert after["misses"] == before["misses"]
    assert c.keys() == ["k"]
    assert c.delete("k") is True


def test_overwrite_replaces_value_without_growing(backend: str) -> None:
    c = make(backend, max_size=3)
    c.set("k", "old")
    c.set("k", "new")
    assert c.get("k") == "new"
    assert len(c) == 1


def test_delete(backend: str) -> None:
    c = make(backend)
    c.set("a", 1)
    c.set("b", 2)
    assert c.delete("a") is True
    assert "a" not in c
    assert c.get("a") is None
    assert c.delete("a") is False
    assert c.delete("never") is False
    assert c.get("b") == 2
    assert len(c) == 1


def test_delete_prefix(backend: str) -> None:
    c = make(backend, ttl=None)
    for key in ["user:1", "user:2", "user:10", "users", "session:1", "use"]:
        c.set(key, key)
    assert c.delete_prefix("user:") == 3
    assert sorted(c.keys()) == ["session:1", "use", "users"]
    assert c.delete_prefix("user:") == 0
    assert c.delete_prefix("nothing") == 0
    assert c.delete_prefix("user") == 1
    assert sorted(c.keys()) == ["session:1", "use"]
    assert len(c) == 2


def test_delete_prefix_with_empty_prefix_removes_everything(backend: str) -> None:
    c = make(backend, ttl=None)
    for i in range(5):
        c.set(f"k{i}", i)
    assert c.delete_prefix("") == 5
    assert len(c) == 0
    assert c.keys() == []


def test_delete_prefix_counts_only_live_entries(backend: str) -> None:
    c = make(backend, ttl=None)
    c.set("p:live", 1)
    c.set("p:dead", 2, ttl=SHORT_TTL)
    c.set("q:dead", 3, ttl=SHORT_TTL)
    time.sleep(PAST_SHORT_TTL)
    assert c.delete_prefix("p:") == 1
    assert "p:live" not in c
    assert "p:dead" not in c
    # The expired "p:dead" went too (removed, just not counted); only "q:dead" may linger.
    assert len(c) <= 1


def test_clear_keeps_counters(backend: str) -> None:
    c = make(backend, max_size=2, ttl=None)
    c.set("a", 1)
    c.get("a")
    c.get("nope")
    c.set("b", 2)
    c.set("c", 3)  # evicts "a"
    before = counters(c)
    assert before["evictions"] == 1
    c.clear()
    after = counters(c)
    assert len(c) == 0
    assert c.keys() == []
    assert "b" not in c
    assert c.get("b") is None
    assert after["size"] == 0
    assert after["hits"] == before["hits"] == 1
    assert after["misses"] == before["misses"] == 1
    assert after["evictions"] == before["evictions"] == 1
    assert after["max_size"] == 2
    c.set("d", 4)
    assert c.get("d") == 4


def test_len_and_contains(backend: str) -> None:
    c = make(backend)
    assert len(c) == 0
    assert "a" not in c
    c.set("a", 1)
    c.set("b", 2)
    assert len(c) == 2
    assert "a" in c
    assert "b" in c
    assert "c" not in c


def test_contains_counts_neither_hit_nor_miss(backend: str) -> None:
    c = make(backend)
    c.set("a", 1)
    before = counters(c)
    assert "a" in c
    assert "zz" not in c
    after = counters(c)
    assert after["hits"] == before["hits"]
    assert after["misses"] == before["misses"]


def test_keys_is_a_snapshot_of_live_keys(backend: str) -> None:
    c = make(backend, ttl=None)
    assert c.keys() == []
    c.set("a", 1)
    c.set("b", 2)
    c.set("gone", 3, ttl=SHORT_TTL)
    snapshot = c.keys()
    assert isinstance(snapshot, list)
    assert all(type(k) is str for k in snapshot)
    time.sleep(PAST_SHORT_TTL)
    assert sorted(c.keys()) == ["a", "b"]
    c.set("c", 3)
    assert sorted(snapshot) == ["a", "b", "gone"]
    snapshot.clear()
    assert sorted(c.keys()) == ["a", "b", "c"]


def test_removed_values_are_released(backend: str) -> None:
    c = make(backend, max_size=2, ttl=None)

    def stored(key: str) -> weakref.ref[Value]:
        value = Value(key)
        c.set(key, value)
        return weakref.ref(value)

    deleted = stored("deleted")
    c.delete("deleted")
    assert released(deleted, c)

    overwritten = stored("over")
    c.set("over", "plain")
    assert released(overwritten, c)

    evicted = stored("evicted")
    c.set("x", 1)
    c.set("y", 2)
    assert "evicted" not in c
    assert released(evicted, c)

    cleared = stored("cleared")
    c.clear()
    assert released(cleared, c)

    prefixed = stored("pre:1")
    c.delete_prefix("pre:")
    assert released(prefixed, c)

    kept = stored("kept")
    gc.collect()
    assert kept() is not None
    assert c.get("kept") is kept()


# --- stats ---------------------------------------------------------------------------------------


def test_stats_counts(backend: str) -> None:
    c = make(backend, max_size=2, ttl=None)
    assert c.stats() == {
        "hits": 0,
        "misses": 0,
        "evictions": 0,
        "expirations": 0,
        "size": 0,
        "max_size": 2,
    }
    c.get("a")  # miss
    c.set("a", 1)
    c.get("a")  # hit
    c.get("a", "d")  # hit
    c.get("b", "d")  # miss
    c.set("b", 2)
    c.set("c", 3)  # full: evicts "a", last used before "b" was set
    stats = c.stats()
    assert set(stats) == STATS_KEYS
    assert stats == {
        "hits": 2,
        "misses": 2,
        "evictions": 1,
        "expirations": 0,
        "size": 2,
        "max_size": 2,
    }
    assert "a" not in c


def test_stats_size_follows_len(backend: str) -> None:
    c = make(backend, ttl=None)
    for i in range(10):
        c.set(f"k{i}", i)
        assert c.stats()["size"] == len(c) == i + 1
    c.delete("k0")
    assert c.stats()["size"] == len(c) == 9


def test_delete_is_not_an_eviction(backend: str) -> None:
    c = make(backend, max_size=2, ttl=None)
    c.set("a", 1)
    c.set("b", 2)
    c.delete("a")
    c.delete_prefix("b")
    assert c.stats()["evictions"] == 0


# --- TTL -----------------------------------------------------------------------------------------


def test_entry_expires_after_its_ttl(backend: str) -> None:
    c = make(backend, ttl=None)
    value = Value()
    c.set("k", value, ttl=SHORT_TTL)
    time.sleep(PAST_SHORT_TTL)
    marker = object()
    assert c.get("k", marker) is marker
    assert "k" not in c
    assert c.get("k") is None


def test_entry_is_live_before_its_ttl(backend: str) -> None:
    c = make(backend, ttl=None)
    value = Value()
    c.set("k", value, ttl=30.0)
    assert c.get("k") is value
    assert "k" in c
    remaining = c.expires_in("k")
    assert remaining is not None
    assert 15.0 < remaining <= 30.0


def test_expired_read_counts_a_miss_and_an_expiration(backend: str) -> None:
    c = make(backend, ttl=None)
    value = Value()
    ref = weakref.ref(value)
    c.set("k", value, ttl=SHORT_TTL)
    del value
    time.sleep(PAST_SHORT_TTL)
    before = counters(c)
    assert c.get("k", "default") == "default"
    after = counters(c)
    assert after["misses"] == before["misses"] + 1
    assert after["hits"] == before["hits"]
    # Counted once, whether the read or the background sweeper got there first.
    assert after["expirations"] == 1
    # The expired entry is removed, and its value released.
    assert len(c) == 0
    assert after["size"] == 0
    assert released(ref, c)


def test_default_ttl_from_constructor(backend: str) -> None:
    c = make(backend, ttl=SHORT_TTL)
    c.set("implicit", 1)
    c.set("explicit_none", 2, ttl=None)
    c.set("own", 3, ttl=30.0)
    for key in ("implicit", "explicit_none"):
        remaining = c.expires_in(key)
        assert remaining is not None
        assert remaining <= SHORT_TTL
    time.sleep(PAST_SHORT_TTL)
    assert c.get("implicit") is None
    assert c.get("explicit_none") is None
    assert c.get("own") == 3


def test_ttl_none_means_no_expiry(backend: str) -> None:
    c = make(backend, ttl=None)
    c.set("forever", 1)
    c.set("short", 2, ttl=SHORT_TTL)
    assert c.expires_in("forever") is None
    time.sleep(PAST_SHORT_TTL)
    assert c.get("forever") == 1
    assert c.expires_in("forever") is None
    assert c.get("short") is None


def test_overwrite_resets_the_ttl(backend: str) -> None:
    c = make(backend, ttl=None)
    c.set("k", 1, ttl=SHORT_TTL)
    c.set("k", 2)  # the cache default: no expiry
    assert c.expires_in("k") is None
    time.sleep(PAST_SHORT_TTL)
    assert c.get("k") == 2


def test_expired_entry_is_not_live_anywhere(backend: str) -> None:
    c = make(backend, ttl=None)
    for key in ("a", "b", "c", "d"):
        c.set(key, key, ttl=SHORT_TTL)
    time.sleep(PAST_SHORT_TTL)
    assert "a" not in c
    assert c.delete("b") is False
    assert c.touch("c") is False
    assert c.get("c") is None
    with pytest.raises(KeyError):
        c.expires_in("d")
    assert c.keys() == []


def test_tiny_ttl_is_accepted_and_expires(backend: str) -> None:
    c = make(backend, ttl=None)
    c.set("k", 1, ttl=1e-9)
    time.sleep(0.01)
    assert c.get("k") is None


@pytest.mark.parametrize("huge", [1e300, sys.float_info.max])
def test_huge_finite_ttl_is_accepted(backend: str, huge: float) -> None:
    c = make(backend, ttl=huge)
    assert c.ttl == huge
    c.set("a", 1)
    c.set("b", 2, ttl=huge)
    c.set("c", 3, ttl=None)
    assert c.touch("c", ttl=huge) is True
    assert c.get_or_set("d", lambda: 4, ttl=huge) == 4
    for key, value in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        assert c.get(key) == value
        remaining = c.expires_in(key)
        assert remaining is None or remaining > 1e9


def test_background_sweeper_reclaims_unread_expired_entries(backend: str) -> None:
    c = make(backend, ttl=None)
    for i in range(20):
        c.set(f"k{i}", i, ttl=SHORT_TTL)
    c.set("forever", "x")
    deadline = time.monotonic() + 20.0
    while len(c) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(c) == 1, "the sweeper did not reclaim expired entries within 20 s"
    assert c.stats()["expirations"] == 20
    assert c.get("forever") == "x"


# --- expires_in / touch --------------------------------------------------------------------------


def test_expires_in_absent_key_raises_key_error(backend: str) -> None:
    c = make(backend)
    with pytest.raises(KeyError):
        c.expires_in("absent")


def test_expires_in_reports_remaining_seconds(backend: str) -> None:
    c = make(backend, ttl=100.0)
    c.set("default", 1)
    c.set("own", 2, ttl=10.0)
    default_left = c.expires_in("default")
    own_left = c.expires_in("own")
    assert default_left is not None
    assert own_left is not None
    assert 50.0 < default_left <= 100.0
    assert 5.0 < own_left <= 10.0


def test_touch_absent_returns_false(backend: str) -> None:
    c = make(backend)
    assert c.touch("absent") is False
    assert c.touch("absent", ttl=5.0) is False
    assert "absent" not in c
    assert len(c) == 0


def test_touch_extends_the_ttl(backend: str) -> None:
    c = make(backend, ttl=None)
    c.set("k", "v", ttl=SHORT_TTL)
    assert c.touch("k", ttl=30.0) is True
    remaining = c.expires_in("k")
    assert remaining is not None
    assert 15.0 < remaining <= 30.0
    time.sleep(PAST_SHORT_TTL)
    assert c.get("k") == "v"


def test_touch_shortens_the_ttl(backend: str) -> None:
    c = make(backend, ttl=None)
    c.set("k", "v", ttl=30.0)
    assert c.touch("k", ttl=SHORT_TTL) is True
    time.sleep(PAST_SHORT_TTL)
    assert c.get("k") is None


def test_touch_without_ttl_uses_the_cache_default(backend: str) -> None:
    c = make(backend, ttl=SHORT_TTL)
    c.set("k", "v", ttl=30.0)
    assert c.touch("k") is True
    remaining = c.expires_in("k")
    assert remaining is not None
    assert remaining <= SHORT_TTL
    time.sleep(PAST_SHORT_TTL)
    assert c.get("k") is None


def test_touch_without_ttl_on_a_no_expiry_cache_removes_the_deadline(backend: str) -> None:
    c = make(backend, ttl=None)
    c.set("k", "v", ttl=SHORT_TTL)
    assert c.touch("k") is True
    assert c.expires_in("k") is None
    time.sleep(PAST_SHORT_TTL)
    assert c.get("k") == "v"


# --- get_or_set (single thread) ------------------------------------------------------------------


def test_get_or_set_loads_once_then_hits(backend: str) -> None:
    c = make(backend)
    calls: list[int] = []
    value = Value()

    def factory() -> Value:
        calls.append(1)
        return value

    assert c.get_or_set("k", factory) is value
    assert c.get_or_set("k", factory) is value
    assert c.get("k") is value
    assert len(calls) == 1


def test_get_or_set_returns_existing_value_without_calling_factory(backend: str) -> None:
    c = make(backend)
    value = Value()
    c.set("k", value)

    def factory() -> object:
        raise AssertionError("the factory must not run on a hit")

    assert c.get_or_set("k", factory) is value


def test_get_or_set_caches_none(backend: str) -> None:
    c = make(backend)
    calls: list[int] = []

    def factory() -> None:
        calls.append(1)

    assert c.get_or_set("k", factory) is None
    assert c.get_or_set("k", factory) is None
    assert "k" in c
    assert len(calls) == 1


def test_get_or_set_with_ttl(backend: str) -> None:
    c = make(backend, ttl=None)
    calls: list[int] = []

    def factory() -> int:
        calls.append(1)
        return len(calls)

    assert c.get_or_set("k", factory, ttl=SHORT_TTL) == 1
    remaining = c.expires_in("k")
    assert remaining is not None
    assert remaining <= SHORT_TTL
    time.sleep(PAST_SHORT_TTL)
    assert c.get_or_set("k", factory) == 2
    assert c.expires_in("k") is None


def test_get_or_set_uses_the_default_ttl(backend: str) -> None:
    c = make(backend, ttl=SHORT_TTL)
    assert c.get_or_set("k", lambda: 1) == 1
    time.sleep(PAST_SHORT_TTL)
    assert "k" not in c


def test_get_or_set_factory_error_propagates_and_caches_nothing(backend: str) -> None:
    c = make(backend)

    def boom() -> object:
        raise LookupError("factory failed")

    with pytest.raises(LookupError, match="factory failed"):
        c.get_or_set("k", boom)
    assert "k" not in c
    assert len(c) == 0
    assert c.get_or_set("k", lambda: "ok") == "ok"
    assert c.get("k") == "ok"


def test_same_key_in_another_cache_is_not_reentrance(backend: str) -> None:
    first = make(backend)
    second = make(backend)

    def factory() -> object:
        return ("outer", second.get_or_set("k", lambda: "inner"))

    assert first.get_or_set("k", factory) == ("outer", "inner")
    assert second.get("k") == "inner"


def test_get_or_set_reentering_own_key_raises_cache_error(backend: str) -> None:
    c = make(backend)

    def factory() -> object:
        return c.get_or_set("k", lambda: "inner")

    with pytest.raises(CacheError):
        c.get_or_set("k", factory)
    assert issubclass(CacheError, SarkNativeError)
    assert "k" not in c
    assert c.get_or_set("k", lambda: "later") == "later"


# --- LRU -----------------------------------------------------------------------------------------


def test_recently_read_key_survives_eviction(backend: str) -> None:
    c = make(backend, max_size=3, ttl=None)
    c.set("a", 1)
    c.set("b", 2)
    c.set("c", 3)
    assert c.get("a") == 1
    c.set("d", 4)
    assert "b" not in c
    assert sorted(c.keys()) == ["a", "c", "d"]
    assert c.stats()["evictions"] == 1


def test_overwrite_refreshes_recency(backend: str) -> None:
    c = make(backend, max_size=3, ttl=None)
    c.set("a", 1)
    c.set("b", 2)
    c.set("c", 3)
    c.set("a", 10)
    c.set("d", 4)
    assert sorted(c.keys()) == ["a", "c", "d"]
    assert c.get("a") == 10


def test_contains_does_not_refresh_recency(backend: str) -> None:
    c = make(backend, max_size=3, ttl=None)
    c.set("a", 1)
    c.set("b", 2)
    c.set("c", 3)
    assert "a" in c
    c.set("d", 4)
    assert "a" not in c
    assert sorted(c.keys()) == ["b", "c", "d"]


def test_eviction_only_when_full(backend: str) -> None:
    c = make(backend, max_size=5, ttl=None)
    for i in range(5):
        c.set(f"k{i}", i)
    assert len(c) == 5
    assert c.stats()["evictions"] == 0
    # Overwriting in a full cache makes no room: nothing is evicted.
    c.set("k2", 20)
    assert len(c) == 5
    assert c.stats()["evictions"] == 0
    assert sorted(c.keys()) == [f"k{i}" for i in range(5)]
    c.set("k5", 5)
    assert len(c) == 5
    assert c.stats()["evictions"] == 1
    assert "k0" not in c


def test_max_size_one(backend: str) -> None:
    c = make(backend, max_size=1, ttl=None)
    c.set("a", 1)
    c.set("b", 2)
    assert c.keys() == ["b"]
    assert c.get("a") is None
    assert c.get("b") == 2
    assert c.get_or_set("c", lambda: 3) == 3
    assert c.keys() == ["c"]
    assert c.stats()["evictions"] == 2


def test_sequential_inserts_keep_the_newest(backend: str) -> None:
    c = make(backend, max_size=7, ttl=None)
    for i in range(100):
        c.set(f"k{i}", i)
        assert len(c) == min(i + 1, 7)
    assert sorted(c.keys()) == sorted(f"k{i}" for i in range(93, 100))
    assert c.stats()["evictions"] == 93


def test_exact_lru_across_many_entries_single_thread(backend: str) -> None:
    # Sequential use from one thread is exact LRU on both backends (docs/cache.md), also with
    # 64 shards: the victim is the entry with the oldest use.
    c = make(backend, max_size=64, ttl=None)
    keys = [f"k{i}" for i in range(64)]
    for key in keys:
        c.set(key, key)
    order = keys[:]
    random.Random(1234).shuffle(order)
    for key in order:
        assert c.get(key) == key
    for i in range(32):
        c.set(f"new{i}", i)
    expected = set(order[32:]) | {f"new{i}" for i in range(32)}
    assert set(c.keys()) == expected
    assert c.stats()["evictions"] == 32


def test_exact_lru_in_a_large_single_thread_cache(backend: str) -> None:
    # Large enough for the Rust cache to spread entries over many shards: the victim is still
    # the entry with the oldest use, as long as one thread uses the cache.
    size = 4_096
    c = make(backend, max_size=size, ttl=None)
    keys = [f"k{i}" for i in range(size)]
    for key in keys:
        c.set(key, key)
    order = keys[:]
    random.Random(99).shuffle(order)
    for key in order:
        assert c.get(key) == key
    for i in range(size // 2):
        c.set(f"new{i}", i)
    expected = set(order[size // 2 :]) | {f"new{i}" for i in range(size // 2)}
    assert set(c.keys()) == expected
    assert c.stats()["evictions"] == size // 2


def test_hot_keys_survive_a_stream_of_new_keys(backend: str) -> None:
    c = make(backend, max_size=100, ttl=None)
    hot = [f"hot{i}" for i in range(10)]
    for key in hot:
        c.set(key, key)
    for i in range(1_000):
        c.set(f"cold{i}", i)
        if i % 20 == 0:
            for key in hot:
                assert c.get(key) == key
        assert len(c) <= 100
    assert len(c) == 100
    assert all(key in c for key in hot)


# --- keys: str subclasses, surrogates, odd strings -----------------------------------------------


class MyStr(str):
    __slots__ = ()


def test_str_subclass_keys(backend: str) -> None:
    c = make(backend, ttl=None)
    value = Value()
    c.set(MyStr("k"), value)
    assert c.get("k") is value
    assert c.get(MyStr("k")) is value
    assert MyStr("k") in c
    listed = c.keys()
    assert listed == ["k"]
    assert all(isinstance(k, str) for k in listed)
    assert c.expires_in(MyStr("k")) is None
    assert c.touch(MyStr("k")) is True
    assert c.get_or_set(MyStr("k"), lambda: "other") is value
    assert c.delete_prefix(MyStr("k")) == 1
    c.set("j", 1)
    assert c.delete(MyStr("j")) is True
    assert len(c) == 0


def test_lone_surrogate_keys(backend: str) -> None:
    c = make(backend, ttl=None)
    lone = "\ud800"
    c.set(lone, "high")
    c.set("\udc00", "low")
    c.set("x\udfffy", "middle")
    assert c.get(lone) == "high"
    assert c.get("\udc00") == "low"
    assert c.get("x\udfffy") == "middle"
    assert lone in c
    assert sorted(c.keys()) == sorted([lone, "\udc00", "x\udfffy"])
    assert c.expires_in(lone) is None
    assert c.touch(lone) is True
    assert c.get_or_set(lone, lambda: "other") == "high"
    assert c.delete_prefix("x\udfff") == 1
    assert c.delete(lone) is True
    assert lone not in c
    assert c.get("\udc00") == "low"


def test_surrogate_pair_and_astral_character_are_different_keys(backend: str) -> None:
    # Two lone surrogates side by side are not the character they would encode in UTF-16.
    c = make(backend, ttl=None)
    pair = "\ud800\udc00"
    astral = "\U00010000"
    assert pair != astral
    c.set(pair, "pair")
    c.set(astral, "astral")
    assert len(c) == 2
    assert c.get(pair) == "pair"
    assert c.get(astral) == "astral"
    assert sorted(c.keys()) == sorted([pair, astral])
    assert c.delete(pair) is True
    assert c.get(astral) == "astral"


def test_empty_nul_and_non_ascii_keys(backend: str) -> None:
    c = make(backend, ttl=None)
    keys = ["", "\x00", "a\x00b", "é", "e\u0301", "日本語", "🙂", "x" * 10_000]
    for i, key in enumerate(keys):
        c.set(key, i)
    assert len(c) == len(keys)
    for i, key in enumerate(keys):
        assert c.get(key) == i
    assert sorted(c.keys()) == sorted(keys)
    assert c.delete_prefix("a\x00") == 1
    assert c.get("") == 0


# --- bad input -----------------------------------------------------------------------------------


def _fail_factory() -> object:
    raise AssertionError("the factory must not run on bad input")


KEY_CALLS: dict[str, Callable[[Cache, Any], object]] = {
    "get": lambda c, k: c.get(k),
    "get_default": lambda c, k: c.get(k, "default"),
    "set": lambda c, k: c.set(k, "value"),
    "set_ttl": lambda c, k: c.set(k, "value", ttl=1.0),
    "delete": lambda c, k: c.delete(k),
    "delete_prefix": lambda c, k: c.delete_prefix(k),
    "contains": lambda c, k: k in c,
    "get_or_set": lambda c, k: c.get_or_set(k, _fail_factory),
    "expires_in": lambda c, k: c.expires_in(k),
    "touch": lambda c, k: c.touch(k),
}


def assert_usable(c: Cache, expected: dict[str, object]) -> None:
    """The cache still holds ``expected`` exactly and serves every operation."""
    assert sorted(c.keys()) == sorted(expected)
    assert len(c) == len(expected)
    for key, value in expected.items():
        assert c.get(key) == value
    c.set("__probe__", "p")
    assert c.get("__probe__") == "p"
    assert c.get_or_set("__loaded__", lambda: "l") == "l"
    assert c.delete("__probe__") is True
    assert c.delete("__loaded__") is True


@pytest.mark.parametrize("call", list(KEY_CALLS), ids=list(KEY_CALLS))
@pytest.mark.parametrize("key", NON_STR_KEYS, ids=lambda k: type(k).__name__)
def test_non_str_key_raises_type_error(backend: str, call: str, key: object) -> None:
    c = make(backend)
    c.set("a", 1)
    with pytest.raises(TypeError):
        KEY_CALLS[call](c, key)
    assert_usable(c, {"a": 1})


@pytest.mark.parametrize("ttl", BAD_TTL_VALUES, ids=repr)
def test_bad_ttl_in_constructor_raises_value_error(backend: str, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        make(backend, ttl=ttl)


@pytest.mark.parametrize("ttl", NON_NUMBER_TTLS, ids=repr)
def test_non_number_ttl_in_constructor_raises_type_error(backend: str, ttl: object) -> None:
    with pytest.raises(TypeError):
        make(backend, ttl=ttl)


TTL_CALLS: dict[str, Callable[[Cache, Any], object]] = {
    "set": lambda c, ttl: c.set("k", "value", ttl=ttl),
    "set_existing": lambda c, ttl: c.set("a", "changed", ttl=ttl),
    "get_or_set": lambda c, ttl: c.get_or_set("k", lambda: "value", ttl=ttl),
    "touch": lambda c, ttl: c.touch("a", ttl=ttl),
}


@pytest.mark.parametrize("call", list(TTL_CALLS), ids=list(TTL_CALLS))
@pytest.mark.parametrize("ttl", BAD_TTL_VALUES, ids=repr)
def test_bad_ttl_in_calls_raises_value_error(backend: str, call: str, ttl: float) -> None:
    c = make(backend, ttl=None)
    c.set("a", 1)
    with pytest.raises(ValueError, match="ttl"):
        TTL_CALLS[call](c, ttl)
    # Nothing changed: no new entry, the old value and its (absent) deadline are intact.
    assert c.expires_in("a") is None
    assert_usable(c, {"a": 1})


@pytest.mark.parametrize("call", list(TTL_CALLS), ids=list(TTL_CALLS))
@pytest.mark.parametrize("ttl", NON_NUMBER_TTLS, ids=repr)
def test_non_number_ttl_in_calls_raises_type_error(backend: str, call: str, ttl: object) -> None:
    c = make(backend, ttl=None)
    c.set("a", 1)
    with pytest.raises(TypeError):
        TTL_CALLS[call](c, ttl)
    assert c.expires_in("a") is None
    assert_usable(c, {"a": 1})


@pytest.mark.parametrize("max_size", [0, -1, -100])
def test_max_size_below_one_raises_value_error(backend: str, max_size: int) -> None:
    with pytest.raises(ValueError, match="max_size"):
        make(backend, max_size=max_size)


@pytest.mark.parametrize("max_size", [True, False, 1.0, 10.5, "10", None], ids=repr)
def test_non_int_max_size_raises_type_error(backend: str, max_size: object) -> None:
    with pytest.raises(TypeError):
        make(backend, max_size=max_size)


@pytest.mark.parametrize("bad", ["rsut", "", "Rust", "PYTHON", "native"])
def test_bad_backend_raises_value_error(bad: Any) -> None:
    with pytest.raises(ValueError, match="backend"):
        Cache(backend=bad)


def test_factory_error_leaves_cache_usable(backend: str) -> None:
    c = make(backend)
    c.set("a", 1)

    def boom() -> object:
        raise KeyError("inner")

    with pytest.raises(KeyError):
        c.get_or_set("k", boom)
    assert_usable(c, {"a": 1})


def test_errors_in_a_row_leave_cache_usable(backend: str) -> None:
    c = make(backend, max_size=3, ttl=None)
    c.set("a", 1)
    c.set("b", 2)
    with pytest.raises(TypeError):
        KEY_CALLS["set"](c, 1)
    with pytest.raises(ValueError, match="ttl"):
        c.set("c", 3, ttl=-1)
    with pytest.raises(KeyError):
        c.expires_in("nope")
    with pytest.raises(CacheError):
        c.get_or_set("r", lambda: c.get_or_set("r", lambda: 0))
    assert_usable(c, {"a": 1, "b": 2})
    c.set("c", 3)
    c.set("d", 4)
    assert len(c) == 3
