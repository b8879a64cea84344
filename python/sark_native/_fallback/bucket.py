"""The pure-Python twin of ``core::bucket``: murmur3 x86_32 (seed 0) through ``mmh3``."""

from __future__ import annotations

import mmh3

__all__ = ["bucket"]

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
