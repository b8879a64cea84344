"""Single-flight ``aget_or_set`` for asyncio, shared by both cache backends.

The Rust cache calls :func:`aget_or_set` for its awaitable method, so both backends have one
implementation of the asyncio semantics: one loader per key among the tasks of one event loop;
every waiter gets the loader's value or exception; nothing is cached on failure; a loader that
asks for its own key gets :class:`CacheError`; if the loading task is cancelled, the next waiter
becomes the loader. A thread never waits on an asyncio load, nor a task on a thread.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from .exceptions import CacheError

__all__ = ["aget_or_set"]

_MISSING: Any = object()


class _CacheLike(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...
    def set(self, key: str, value: Any, ttl: float | None = None) -> None: ...


class _Flight:
    """One load in progress: its owner task and the future its waiters await."""

    __slots__ = ("future", "owner")

    def __init__(self, owner: asyncio.Task[Any] | None, future: asyncio.Future[Any]) -> None:
        self.owner = owner
        self.future = future


class _Abandoned(Exception):
    """The loading task was cancelled: the next waiter takes over."""


async def aget_or_set(
    cache: _CacheLike,
    flights: MutableMapping[Any, _Flight],
    key: str,
    factory: Callable[[], Awaitable[Any] | Any],
    ttl: float | None,
) -> Any:
    """The cached value under ``key``, or the value of ``await factory()``, stored."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    slot = (loop, key)
    while True:
        value = cache.get(key, _MISSING)
        if value is not _MISSING:
            return value
        flight = flights.get(slot)
        if flight is None:
            break
        if flight.owner is me:
            raise CacheError(
                f"aget_or_set({key!r}): the factory asked for its own key; it would wait for itself"
            )
        try:
            # shield: a waiter's cancellation must not cancel the shared future.
            return await asyncio.shield(flight.future)
        except _Abandoned:
            continue

    future: asyncio.Future[Any] = loop.create_future()
    flight = _Flight(me, future)
    flights[slot] = flight
    try:
        result = factory()
        if inspect.isawaitable(result):
            result = await result
    except asyncio.CancelledError:
        _end(flights, slot, flight)
        future.set_exception(_Abandoned())
        future.exception()  # retrieved: no "never retrieved" warning when nobody waits
        raise
    except BaseException as exc:
        _end(flights, slot, flight)
        if isinstance(exc, Exception):
            future.set_exception(exc)
        else:  # KeyboardInterrupt, SystemExit: interrupted, not failed
            future.set_exception(_Abandoned())
        future.exception()
        raise
    cache.set(key, result, ttl)
    _end(flights, slot, flight)
    future.set_result(result)
    return result


def _end(flights: MutableMapping[Any, _Flight], slot: Any, flight: _Flight) -> None:
    if flights.get(slot) is flight:
        del flights[slot]
