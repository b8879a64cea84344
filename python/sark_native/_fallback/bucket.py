"""The pure-Python twin of ``core::bucket``: murmur3 x86_32 (seed 0) through ``mmh3``."""

from __future__ import annotations

import mmh3

__all__ = ["RolloutTable", "bucket"]

_hash = mmh3.hash


def bucket(feature: str, unit_id: str) -> int:
    """The bucket (0..100) of ``unit_id`` for ``feature``, as the native ``bucket`` computes it."""
    if not isinstance(feature, str) or not isinstance(unit_id, str):
        raise TypeError(
            "bucket() takes str arguments, not "
            f"{type(feature).__name__} and {type(unit_id).__name__}"
        )
    if not feature:
        raise ValueError("feature must be a non-empty str")
    # Encode here rather than hand mmh3 a str: mmh3 5.x crashes the interpreter on a str with
    # lone surrogates, while .encode() raises UnicodeEncodeError, as the native path does.
    key = f"{feature}:{unit_id}".encode()
    return _hash(key, 0, False) % 100


#: Most features a RolloutTable tracks (as the native one).
MAX_FEATURES = 10_000


class RolloutTable:
    """The twin of the native ``RolloutTable``: percentages by feature and decision counters.

    Counters are plain ints bumped under the GIL (an increment may be lost when two threads race;
    the native table's atomics lose none).
    """

    __slots__ = ("_counts", "_known", "_pct")

    def __init__(self) -> None:
        self._pct: dict[str, int] = {}
        self._known: set[str] = set()
        #: feature -> [times no, times yes]
        self._counts: dict[str, list[int]] = {}

    def is_enabled(self, feature: str, unit_id: str) -> bool:
        pct = self._pct.get(feature, 0)
        if pct >= 100:
            on = True
        elif pct <= 0:
            on = False
        else:
            on = bucket(feature, unit_id) < pct
        counts = self._counts.get(feature)
        if counts is None:
            if not isinstance(feature, str) or not isinstance(unit_id, str):
                raise TypeError("is_enabled() takes str arguments")
            if not feature or len(self._counts) >= MAX_FEATURES:
                return on
            counts = self._counts.setdefault(feature, [0, 0])
        counts[on] += 1
        return on

    def get(self, feature: str) -> int:
        return self._pct.get(feature, 0)

    def set(self, feature: str, pct: int) -> int:
        if not 0 <= pct <= 100:
            raise ValueError("percentage must be from 0 to 100")
        before = self._pct.get(feature, 0)
        self._pct[feature] = pct
        self._known.add(feature)
        return before

    def replace_all(self, snapshot: dict[str, int]) -> None:
        if any(not 0 <= p <= 100 for p in snapshot.values()):
            raise ValueError("percentages must be from 0 to 100")
        self._pct = dict(snapshot)  # one assignment: readers see the old or the new table
        self._known = set(snapshot)

    def percentages(self) -> dict[str, int]:
        pct = self._pct
        return {f: pct.get(f, 0) for f in list(self._known)}

    def assignments(self) -> list[tuple[str, int, int]]:
        return sorted((f, c[0], c[1]) for f, c in list(self._counts.items()) if c[0] or c[1])
