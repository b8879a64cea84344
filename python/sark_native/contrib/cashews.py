"""A cashews backend on :class:`sark_native.Cache`: ``cache.setup("sark://?max_size=10000")``.

Importing this module registers the ``sark://`` scheme with cashews (``cashews.register_backend``),
so an app on cashews makes a ``sark_native.Cache`` its in-process cache with one line::

    import sark_native.contrib.cashews  # registers sark://
    from cashews import cache

    cache.setup("sark://?max_size=10000")          # a new Cache(max_size=10000, ttl=None)
    cache.setup("sark://", cache=my_sark_cache)     # or an existing Cache

:class:`SarkNativeBackend` implements every command of cashews' backend interface with the
semantics of cashews' own ``Memory`` backend; docs/cache.md ("cashews") lists the few deliberate
differences (values by reference, glob patterns, ``unlock`` checks the owner).
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from cashews import register_backend
from cashews.backends.interface import NOT_EXIST, UNLIMITED, Backend
from cashews.utils import Bitarray, get_obj_size

from sark_native import Cache

if TYPE_CHECKING:
    from cashews.serialize import Serializer

    from sark_native._backend import BackendChoice

__all__ = ["DEFAULT_MAX_SIZE", "DEFAULT_NAME", "SCHEME", "SarkNativeBackend"]

#: The URL scheme registered with cashews: ``cache.setup("sark://?max_size=...")``.
SCHEME: Final = "sark"
#: ``max_size`` of a Cache built from a URL without one (cashews' ``Memory`` default size).
DEFAULT_MAX_SIZE: Final = 1000
#: ``name`` (the metrics label) of a Cache built from a URL without one.
DEFAULT_NAME: Final = "cashews"

_MISSING: Final[Any] = object()
_GLOB_SPECIAL: Final = frozenset("*?[\\")


def _literal_prefix(pattern: str) -> str | None:
    """``"user:*"`` -> ``"user:"``: the prefix when ``pattern`` is a literal and one final ``*``."""
    if not pattern.endswith("*"):
        return None
    head = pattern[:-1]
    if any(char in _GLOB_SPECIAL for char in head):
        return None
    return head


@functools.lru_cache(maxsize=256)
def _compile_glob(pattern: str) -> re.Pattern[str]:
    """A Redis-style glob as a regex for ``fullmatch``.

    ``*`` any run, ``?`` one character, ``[abc]`` / ``[a-z]`` / ``[^...]`` a class, ``\\x`` a
    literal ``x``; every other character is literal (``.`` included). An unclosed ``[`` is literal.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif char == "[":
            j = i
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            members: list[str] = []
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\" and j + 1 < n:
                    members.append(re.escape(pattern[j + 1]))
                    j += 2
                elif j + 2 < n and pattern[j + 1] == "-" and pattern[j + 2] != "]":
                    low, high = sorted((pattern[j], pattern[j + 2]))
                    members.append(f"{re.escape(low)}-{re.escape(high)}")
                    j += 3
                else:
                    members.append(re.escape(pattern[j]))
                    j += 1
            if j >= n:  # no closing bracket: the "[" is a literal
                out.append(re.escape(char))
                continue
            i = j + 1
            if members:
                out.append(f"[{'^' if negate else ''}{''.join(members)}]")
            else:  # "[]" matches nothing, "[^]" any one character
                out.append("." if negate else "(?!)")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _empty_bits() -> Any:
    return Bitarray("0")  # type: ignore[no-untyped-call]


class SarkNativeBackend(Backend):
    """A cashews backend storing its entries in a :class:`sark_native.Cache`.

    Pass an existing ``cache``, or let the backend build ``Cache(max_size=..., ttl=None,
    backend=..., name=...)`` (the URL parameters of ``sark://``). ``size`` is an alias of
    ``max_size`` and ``check_interval`` is accepted and ignored (the Cache sweeps expired entries
    itself), so a ``mem://`` URL works unchanged under ``sark://``.

    Values are stored by reference (``Memory`` stores a shallow copy) unless the cashews setup
    adds a pickler, a secret or compression. Entries written without an ``expire`` get the Cache's
    default ``ttl`` (``None`` for a Cache built here).
    """

    def __init__(
        self,
        cache: Cache | None = None,
        *,
        max_size: int | None = None,
        size: int | None = None,
        backend: str | None = None,
        name: str | None = None,
        check_interval: float | None = None,
        serializer: Serializer | None = None,
    ) -> None:
        super().__init__(serializer=serializer)
        del check_interval  # a Memory parameter: the Cache runs its own sweeper
        if cache is not None:
            if not isinstance(cache, Cache):
                raise TypeError(f"cache must be a sark_native.Cache, not {type(cache).__name__!r}")
            if max_size is not None or size is not None or backend is not None or name is not None:
                raise ValueError("pass either cache or max_size/size/backend/name, not both")
            self._cache: Cache = cache
        else:
            if max_size is not None and size is not None:
                raise ValueError("pass max_size or its alias size, not both")
            limit = max_size if max_size is not None else size
            self._cache = Cache(
                max_size=DEFAULT_MAX_SIZE if limit is None else limit,
                ttl=None,
                backend=cast("BackendChoice", "auto" if backend is None else backend),
                name=DEFAULT_NAME if name is None else str(name),
            )
        # Every read-modify-write runs under this lock and never awaits while holding it, so
        # incr & co. are atomic also for backends shared by event loops in several threads.
        self._lock = threading.Lock()
        self._is_init = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cache={self._cache!r})"

    @property
    def cache(self) -> Cache:
        """The :class:`sark_native.Cache` holding the entries."""
        return self._cache

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def is_init(self) -> bool:
        return self._is_init

    async def init(self) -> None:
        self._is_init = True

    async def close(self) -> None:
        self._is_init = False

    # --- helpers --------------------------------------------------------------------------------

    async def _encode(self, key: str, value: Any, expire: float | None) -> Any:
        if self._serializer is None:
            return value
        return await self._serializer.encode(self, key=key, value=value, expire=expire)

    async def _decode(self, key: str, value: Any, default: Any) -> Any:
        if self._serializer is None:
            return value
        return await self._serializer.decode(self, key=key, value=value, default=default)

    def _write(self, key: str, value: Any, expire: float | None) -> None:
        """``Memory._set``: a falsy ``expire`` keeps the entry's deadline, a negative one has
        already passed. Call with ``self._lock`` held."""
        cache = self._cache
        if expire:
            if expire < 0:
                cache.delete(key)  # born expired; like an expiry, no on_remove callback
            elif math.isinf(expire):
                cache.set(key, value, ttl=None)
            else:
                cache.set(key, value, ttl=float(expire))
            return
        try:
            left = cache.expires_in(key)
        except KeyError:  # absent or expired: a new entry
            left = None
        if left is not None and left <= 0:
            cache.delete(key)
        else:
            cache.set(key, value, ttl=left)

    def _add(self, key: str, value: Any, expire: float | None) -> bool:
        """Store ``value`` only when ``key`` has no live entry; ``True`` when it did.

        ``Cache.get_or_set`` makes the check and the insert one step, also against threads that
        use the Cache directly. Call with ``self._lock`` held.
        """
        if expire and expire < 0:  # stored and expired at once: nothing to keep
            return key not in self._cache
        stored = False

        def factory() -> Any:
            nonlocal stored
            stored = True
            return value

        ttl = float(expire) if expire and not math.isinf(expire) else None
        self._cache.get_or_set(key, factory, ttl=ttl)
        return stored

    def _match(self, pattern: str) -> list[str]:
        keys = self._cache.keys()
        prefix = _literal_prefix(pattern)
        if prefix is not None:
            return [key for key in keys if key.startswith(prefix)]
        regex = _compile_glob(pattern)
        return [key for key in keys if regex.fullmatch(key)]

    # --- get / set ------------------------------------------------------------------------------

    async def set(
        self,
        key: str,
        value: Any,
        expire: float | None = None,
        exist: bool | None = None,
    ) -> bool:
        value = await self._encode(key, value, expire)
        with self._lock:
            if exist is None:
                self._write(key, value, expire)
                return True
            if exist:
                if key not in self._cache:
                    return False
                self._write(key, value, expire)
                return True
            return self._add(key, value, expire)

    async def set_many(self, pairs: Mapping[str, Any], expire: float | None = None) -> None:
        encoded = [(key, await self._encode(key, value, expire)) for key, value in pairs.items()]
        with self._lock:
            for key, value in encoded:
                self._write(key, value, expire)

    async def set_raw(self, key: str, value: Any, **kwargs: Any) -> None:
        # Like Memory: no serializer, no deadline, extra arguments ignored.
        self._cache.set(key, value, ttl=None)

    async def get(self, key: str, default: Any = None) -> Any:
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            return default
        return await self._decode(key, value, default)

    async def get_raw(self, key: str) -> Any:
        return self._cache.get(key)

    async def get_many(self, *keys: str, default: Any = None) -> tuple[Any, ...]:
        values: list[Any] = []
        for key in keys:
            value = await self.get(key, default)
            # Memory leaves bit arrays out, which shifts the values cashews zips with the keys;
            # here a bit array reads as missing instead.
            values.append(default if isinstance(value, Bitarray) else value)
        return tuple(values)

    async def exists(self, key: str) -> bool:
        return key in self._cache

    async def get_size(self, key: str) -> int:
        value = self._cache.get(key, _MISSING)
        return 0 if value is _MISSING else get_obj_size(value)

    async def get_keys_count(self) -> int:
        return len(self._cache)

    # --- patterns -------------------------------------------------------------------------------

    async def scan(self, pattern: str, batch_size: int = 100) -> AsyncIterator[str]:
        for key in self._match(pattern):
            yield key

    async def get_match(
        self, pattern: str, batch_size: int = 100
    ) -> AsyncIterator[tuple[str, Any]]:
        for key in self._match(pattern):
            value = await self.get(key, _MISSING)
            if value is _MISSING or isinstance(value, Bitarray):
                continue
            yield key, value

    # --- delete ---------------------------------------------------------------------------------

    async def delete(self, key: str) -> bool:
        removed = self._cache.delete(key)
        if removed:
            await self._call_on_remove_callbacks(key)
        return removed

    async def delete_many(self, *keys: str) -> None:
        removed = [key for key in keys if self._cache.delete(key)]
        if removed:
            await self._call_on_remove_callbacks(*removed)

    async def delete_match(self, pattern: str) -> None:
        prefix = _literal_prefix(pattern)
        if prefix is None:
            await self.delete_many(*self._match(pattern))
            return
        if not self._on_remove_callbacks:
            self._cache.delete_prefix(prefix)
            return
        # The callbacks (cashews' tags) need the keys: snapshot them, then one delete_prefix.
        doomed = self._match(pattern)
        self._cache.delete_prefix(prefix)
        if doomed:
            await self._call_on_remove_callbacks(*doomed)

    async def clear(self) -> None:
        self._cache.clear()

    # --- expiry ---------------------------------------------------------------------------------

    async def expire(self, key: str, timeout: float) -> None:
        if not timeout:  # as Memory: a falsy timeout keeps the deadline
            return
        if timeout < 0:
            self._cache.delete(key)
        elif math.isinf(timeout):
            with self._lock:
                value = self._cache.get(key, _MISSING)
                if value is not _MISSING:
                    self._cache.set(key, value, ttl=None)
        else:
            self._cache.touch(key, float(timeout))

    async def get_expire(self, key: str) -> int:
        try:
            left = self._cache.expires_in(key)
        except KeyError:
            return NOT_EXIST
        if left is None:
            return UNLIMITED
        return round(left)

    # --- counters -------------------------------------------------------------------------------

    async def incr(self, key: str, value: int = 1, expire: float | None = None) -> int:
        with self._lock:
            current = self._cache.get(key, _MISSING)
            created = current is _MISSING
            result = value + (0 if created else int(current))
            # Memory applies expire when the counter becomes 1; a new counter always gets it.
            self._write(key, result, expire if created or result == 1 else None)
        return result

    async def get_bits(self, key: str, *indexes: int, size: int = 1) -> tuple[int, ...]:
        array = self._cache.get(key, _MISSING)
        if array is _MISSING:
            array = _empty_bits()
        return tuple(array.get(index, size) for index in indexes)

    async def incr_bits(
        self, key: str, *indexes: int, size: int = 1, by: int = 1
    ) -> tuple[int, ...]:
        with self._lock:
            array = self._cache.get(key, _MISSING)
            if array is _MISSING:
                array = _empty_bits()
            result = []
            for index in indexes:
                array.incr(index, size, by)
                result.append(array.get(index, size))
            self._write(key, array, None)
        return tuple(result)

    async def slice_incr(
        self,
        key: str,
        start: int | float,
        end: int | float,
        maxvalue: int,
        expire: float | None = None,
    ) -> int:
        with self._lock:
            current = self._cache.get(key)
            kept = [stamp for stamp in current if start <= stamp < end] if current else []
            count = len(kept)
            if count < maxvalue:
                count += 1
                kept.append(end)
            self._write(key, kept, expire)
        return count

    # --- sets -----------------------------------------------------------------------------------

    async def set_add(self, key: str, *values: str, expire: float | None = None) -> None:
        with self._lock:
            members = self._cache.get(key, _MISSING)
            if members is _MISSING:
                members = set()
            members.update(values)
            self._write(key, members, expire)

    async def set_remove(self, key: str, *values: str) -> None:
        with self._lock:
            members = self._cache.get(key, _MISSING)
            if members is _MISSING:
                members = set()
            members.difference_update(values)
            self._write(key, members, None)

    async def set_pop(self, key: str, count: int = 100) -> Iterable[str]:
        with self._lock:
            members = self._cache.get(key, _MISSING)
            if members is _MISSING:
                members = set()
            popped: list[str] = [members.pop() for _ in range(min(count, len(members)))]
            self._write(key, members, None)
        return popped

    # --- locks ----------------------------------------------------------------------------------

    async def is_locked(self, key: str, wait: float | None = None, step: float = 0.1) -> bool:
        if wait is None:
            return key in self._cache
        while wait > 0:
            if key not in self._cache:
                return False
            wait -= step
            await asyncio.sleep(step)
        return key in self._cache

    async def unlock(self, key: str, value: Any) -> bool:
        """Release the lock only when ``key`` still holds ``value`` (as Redis and DiskCache do;
        Memory deletes the key whoever holds it)."""
        stored = self._cache.get(key, _MISSING)
        if stored is _MISSING or await self._decode(key, stored, _MISSING) != value:
            return False
        with self._lock:
            # Compare-and-delete: the entry must still be the very object that was compared.
            if self._cache.get(key, _MISSING) is not stored:
                return False
            removed = self._cache.delete(key)
        if removed:
            await self._call_on_remove_callbacks(key)
        return removed

    async def ping(self, message: bytes | None = None) -> bytes:
        if message is None or message == b"PING":
            return b"PONG"
        return message


register_backend(SCHEME, SarkNativeBackend)
