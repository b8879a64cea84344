"""``FeatureFlags``: rollout percentages held in a local snapshot, kept in step with Redis.

The request path (:meth:`FeatureFlags.is_enabled`) reads a dict and calls ``bucket``: no I/O, no
lock, no await. With Redis, one background task per instance keeps the snapshot current:

* :meth:`FeatureFlags.start` loads every ``{prefix}*:rollout_pct`` key before it returns, then
  listens on the channel ``sark_native:rollout`` (payload ``{"feature": ..., "pct": ...}``);
* every ``resync_interval`` seconds (5 by default) it reloads all keys, which also catches keys
  set by hand (``redis-cli SET feature:x:rollout_pct 10``) and features deleted from Redis;
* when Redis is unreachable the last known values stay in force, the outage is logged once at
  WARNING, and the task reconnects with exponential backoff; once Redis answers, Redis is the
  truth again (a missing key is 0%).

A value in Redis that is not a whole number 0..100 counts as 0% and is logged (once per key and
value); it never raises on the request path. Without Redis the snapshot is the store (embedded
mode): :meth:`set_rollout` changes this process only and no start is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .. import _backend

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["CHANNEL", "FeatureFlags", "check_feature", "check_percentage"]

logger = logging.getLogger("sark_native.flags")

T = TypeVar("T")

#: The pub/sub channel every process listens on for rollout changes.
CHANNEL = "sark_native:rollout"
#: The key suffix after the feature name: ``feature:{name}:rollout_pct``.
KEY_SUFFIX = ":rollout_pct"
#: Bound on each step of shutting down (a half-read connection must not hang aclose()).
CLOSE_TIMEOUT = 2.0
#: Longest accepted feature name (it becomes a Redis key and a metrics label).
MAX_FEATURE_LENGTH = 200


def check_feature(feature: object) -> str:
    """``feature`` if it is a usable feature name, else ``TypeError``/``ValueError``."""
    if not isinstance(feature, str):
        raise TypeError(f"feature must be a str, not {type(feature).__name__}")
    if not feature:
        raise ValueError("feature must be a non-empty str")
    if len(feature) > MAX_FEATURE_LENGTH:
        raise ValueError(f"feature names are at most {MAX_FEATURE_LENGTH} characters")
    if not feature.isprintable() or any(c.isspace() for c in feature):
        raise ValueError(f"feature {feature!r} has whitespace or unprintable characters")
    return feature


def check_percentage(pct: object) -> int:
    """``pct`` if it is a whole number 0..100 (an ``int``, not a ``bool``), else ``ValueError``."""
    if isinstance(pct, bool) or not isinstance(pct, int):
        raise ValueError(f"percentage must be an int from 0 to 100, not {pct!r}")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentage must be from 0 to 100, not {pct}")
    return int(pct)


def _parse_stored(raw: object) -> int | None:
    """A percentage as Redis stores it (b"25" or "25"), or None when it is not 0..100."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if 0 <= raw <= 100 else None
    if isinstance(raw, str) and raw.isdecimal() and raw.isascii() and len(raw) <= 3:
        value = int(raw)
        return value if 0 <= value <= 100 else None
    return None


class FeatureFlags:
    """Percentage rollouts per feature, decided locally from a snapshot (see the module doc).

    ``redis`` is ``None`` (embedded store, this process only), a URL (``redis://...``; the client
    is created, owned and closed here) or a ``redis.asyncio.Redis`` client (borrowed: the caller
    closes it). Start one instance per worker process, after any fork (FastAPI lifespan)::

        flags = FeatureFlags(redis="redis://localhost:6379/0")
        async with flags:
            if flags.is_enabled("rust_opa", user_id): ...
    """

    def __init__(
        self,
        redis: Redis | str | None = None,
        *,
        prefix: str = "feature:",
        channel: str = CHANNEL,
        resync_interval: float = 5.0,
        reconnect_backoff: tuple[float, float] = (0.05, 2.0),
        start_timeout: float = 5.0,
    ) -> None:
        if redis is not None and not isinstance(redis, str) and not hasattr(redis, "pubsub"):
            raise TypeError(
                f"redis must be None, a URL or a redis.asyncio.Redis, not {type(redis).__name__}"
            )
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "*?[]\\"):
            raise ValueError("prefix must be a non-empty str without glob characters (*?[]\\)")
        if not resync_interval > 0:
            raise ValueError("resync_interval must be > 0")
        low, high = reconnect_backoff
        if not 0 < low <= high:
            raise ValueError("reconnect_backoff must be (initial, maximum) with 0 < initial <= max")
        self.prefix = prefix
        self.channel = channel
        self.resync_interval = float(resync_interval)
        self.reconnect_backoff = (float(low), float(high))
        self.start_timeout = float(start_timeout)
        #: Percentages and decision counters (native: Rust atomics; else the Python twin).
        #: Replaced whole by a resync, updated per key by a message; the request path reads it.
        self._table = _backend.rollout_table()
        self._decide: Callable[[str, str], bool] = self._table.is_enabled
        self._redis_arg = redis
        self._client: Redis | None = None
        self._owns_client = isinstance(redis, str)
        self._task: asyncio.Task[None] | None = None
        #: Resolved by the first load (True) or the first failed attempt (False).
        self._first_sync: asyncio.Future[bool] | None = None
        self._closed = False
        self._healthy = redis is None
        self._outage_since: float | None = None
        self._logged_garbage: set[tuple[str, str]] = set()
        self._logged_bad_call = False
        self._during_resync: dict[str, int] | None = None
        from .. import metrics

        metrics._track_flags(self)

    # -- the request path -------------------------------------------------------------------

    def is_enabled(self, feature: str, unit_id: str) -> bool:
        """Whether ``unit_id`` is in ``feature``'s rollout: ``bucket(feature, unit_id) < pct``.

        No I/O and never an exception: an unknown feature is 0%; an int ``unit_id`` is taken as
        its ``str()``; any other bad argument gets ``False`` (the Python path) and a warning once.
        """
        try:
            return self._decide(feature, unit_id)
        except Exception:
            return self._is_enabled_slow(feature, unit_id)

    def _is_enabled_slow(self, feature: object, unit_id: object) -> bool:
        if isinstance(unit_id, int) and not isinstance(unit_id, bool):
            return self.is_enabled(feature, str(unit_id))  # type: ignore[arg-type]
        if not self._logged_bad_call:
            self._logged_bad_call = True
            logger.warning(
                "is_enabled(%r, %r): bad arguments; using the Python path (logged once)",
                feature,
                unit_id,
                exc_info=True,
            )
        return False

    def choose(self, feature: str, unit_id: str, *, rust: T, python: T) -> T:
        """``rust`` when ``unit_id`` is in ``feature``'s rollout, else ``python``.

        ``engine = flags.choose("rust_opa", user_id, rust=native_engine, python=opa_engine)``
        """
        return rust if self.is_enabled(feature, unit_id) else python

    def get_rollout(self, feature: str) -> int:
        """The percentage in force for ``feature`` in this process (0 when unknown)."""
        return int(self._table.get(feature))

    def rollouts(self) -> dict[str, int]:
        """A copy of every known feature's percentage, by name."""
        return dict(self._table.percentages())

    def assignments(self) -> dict[str, dict[str, int]]:
        """How often each feature answered Rust / Python in this process (the metrics' source)."""
        return {f: {"python": off, "rust": on} for f, off, on in self._table.assignments()}

    @property
    def redis_enabled(self) -> bool:
        """Whether the percentages come from Redis (else the embedded store)."""
        return self._redis_arg is not None

    @property
    def healthy(self) -> bool:
        """False while Redis is unreachable (the last known values stay in force)."""
        return self._healthy

    # -- changes ------------------------------------------------------------------------------

    def _key(self, feature: str) -> str:
        return f"{self.prefix}{feature}{KEY_SUFFIX}"

    async def set_rollout(self, feature: str, pct: int) -> int:
        """Sets ``feature`` to ``pct`` percent everywhere and returns the previous percentage.

        With Redis the key is written and the change published in one transaction (MULTI/EXEC);
        this process applies it at once, the others within milliseconds through pub/sub.
        ``ValueError`` for a bad feature or percentage; Redis errors propagate (nothing changed).
        """
        check_feature(feature)
        check_percentage(pct)
        if self._redis_arg is None:
            return int(self._table.set(feature, pct))
        client = self._ensure_client()
        payload = json.dumps({"feature": feature, "pct": pct})
        async with client.pipeline(transaction=True) as pipe:
            pipe.set(self._key(feature), str(pct), get=True)
            pipe.publish(self.channel, payload)
            old, _receivers = await pipe.execute()
        self._table.set(feature, pct)
        parsed = _parse_stored(old) if old is not None else 0
        return 0 if parsed is None else parsed

    async def rollback(self, feature: str) -> int:
        """Sets ``feature`` to 0% everywhere at once; returns the previous percentage."""
        return await self.set_rollout(feature, 0)

    # -- lifecycle ----------------------------------------------------------------------------

    def _ensure_client(self) -> Redis:
        if self._closed:
            raise RuntimeError("FeatureFlags is closed")
        if self._client is None:
            arg = self._redis_arg
            if isinstance(arg, str):
                import redis.asyncio

                self._client = redis.asyncio.Redis.from_url(
                    arg, socket_connect_timeout=1.0, socket_timeout=2.0
                )
            else:
                self._client = arg
        assert self._client is not None
        return self._client

    async def start(self) -> None:
        """Loads every percentage from Redis, then keeps them current in a background task.

        Returns once the first load is done; if the first attempt fails (or takes longer than
        ``start_timeout``) it logs that and returns: the task keeps retrying, and every feature
        is 0% (the Python path) until the percentages load. Without Redis it does nothing.
        Idempotent.
        """
        if self._redis_arg is None or self._task is not None:
            return
        self._ensure_client()
        loop = asyncio.get_running_loop()
        self._first_sync = loop.create_future()
        self._task = loop.create_task(self._run(), name="sark_native.flags.sync")
        loaded = False
        with contextlib.suppress(asyncio.TimeoutError):
            loaded = await asyncio.wait_for(asyncio.shield(self._first_sync), self.start_timeout)
        if not loaded:
            logger.warning(
                "FeatureFlags.start: no percentages from Redis yet; every feature is 0%% until "
                "they load (retrying in the background)"
            )

    async def aclose(self) -> None:
        """Stops the background task and closes the Redis client if this instance created it."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await asyncio.wait_for(client.aclose(), CLOSE_TIMEOUT)

    async def __aenter__(self) -> FeatureFlags:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the background task ------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self.reconnect_backoff[0]
        while True:
            pubsub: PubSub | None = None
            listener: asyncio.Task[None] | None = None
            try:
                client = self._ensure_client()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                # Subscribed first, then loaded: a change made in between is not lost.
                await self._resync(client)
                self._mark_healthy()
                backoff = self.reconnect_backoff[0]
                # The listener blocks on the pub/sub connection with no read timeout (a timeout
                # that fires in the middle of a reply can lose a message); the resync runs here.
                listener = asyncio.get_running_loop().create_task(self._listen(pubsub))
                while True:
                    done, _ = await asyncio.wait({listener}, timeout=self.resync_interval)
                    if done:
                        listener.result()  # the listener only ends by raising
                    await self._resync(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._mark_outage(exc)
            finally:
                if listener is not None:
                    listener.cancel()
                    await asyncio.wait({listener}, timeout=CLOSE_TIMEOUT)
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(pubsub.aclose(), CLOSE_TIMEOUT)  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.reconnect_backoff[1])

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None:
                self._apply_message(message.get("data"))

    async def _resync(self, client: Redis) -> None:
        # Messages applied while the keys are read win over what was read: they may be newer.
        self._during_resync = {}
        try:
            pattern = f"{self.prefix}*{KEY_SUFFIX}"
            keys: list[Any] = []
            cursor: Any = 0
            while True:  # SCAN by hand: no async generator left half-consumed on cancellation
                cursor, batch = await client.scan(cursor, match=pattern, count=500)
                keys.extend(batch)
                if not cursor:
                    break
            values = await client.mget(keys) if keys else []
        except BaseException:
            self._during_resync = None
            raise
        snapshot: dict[str, int] = {}
        for key, raw in zip(keys, values, strict=True):
            name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            feature = name[len(self.prefix) : -len(KEY_SUFFIX)]
            if not feature or raw is None:
                continue
            snapshot[feature] = self._checked_stored(feature, raw)
        snapshot.update(self._during_resync)
        self._during_resync = None
        self._table.replace_all(snapshot)
        if self._first_sync is not None and not self._first_sync.done():
            self._first_sync.set_result(True)

    def _checked_stored(self, feature: str, raw: object) -> int:
        pct = _parse_stored(raw)
        if pct is None:
            seen = (feature, repr(raw))  # repr: a value from JSON may be unhashable
            if seen not in self._logged_garbage and len(self._logged_garbage) < 1000:
                self._logged_garbage.add(seen)
                logger.warning(
                    "rollout of %r: Redis holds %r under %s, not a whole number 0..100; "
                    "treating it as 0%%",
                    feature,
                    raw,
                    self._key(feature),
                )
            return 0
        return pct

    def _apply_message(self, data: object) -> None:
        try:
            if isinstance(data, bytes):
                data = data.decode()
            message: Any = json.loads(data)  # type: ignore[arg-type]
            feature = check_feature(message["feature"])
            raw = message["pct"]
        except Exception:
            logger.warning("ignoring a malformed message on %s: %r", self.channel, data)
            return
        pct = self._checked_stored(feature, raw)
        self._table.set(feature, pct)
        if self._during_resync is not None:
            self._during_resync[feature] = pct

    def _mark_healthy(self) -> None:
        if self._outage_since is not None:
            logger.warning(
                "Redis is reachable again after %.1f s; percentages reloaded",
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
        self._healthy = True

    def _mark_outage(self, exc: BaseException) -> None:
        self._healthy = False
        if self._first_sync is not None and not self._first_sync.done():
            self._first_sync.set_result(False)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning(
                "Redis is unreachable (%s: %s); the last known percentages stay in force "
                "while reconnecting (logged once per outage)",
                type(exc).__name__,
                exc,
            )
        else:
            logger.debug("Redis still unreachable: %s", exc)
