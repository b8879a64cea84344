"""Rollout: stable bucketing, percentages per feature (embedded or from Redis), routing helpers.

* :func:`bucket` — ``murmur3_x86_32(utf8(feature + ":" + unit_id), seed=0) % 100``, identical on
  the native and the pure-Python path (Unleash's ``normalizedHash - 1``); a unit is in a rollout
  when ``bucket < percentage``.
* :class:`FeatureFlags` — ``is_enabled(feature, unit_id)`` from a local snapshot (no I/O),
  ``choose(feature, unit_id, rust=..., python=...)``, ``set_rollout``/``rollback``.
* :func:`with_fallback` / :class:`AsyncWithFallback` — the per-call fallback of the components.

See ``docs/rollout.md``.
"""

from __future__ import annotations

from .. import _backend
from ._fallback_call import AsyncWithFallback, WithFallback, is_internal_failure, with_fallback
from ._feature_flags import CHANNEL, FeatureFlags, check_feature, check_percentage

__all__ = [
    "CHANNEL",
    "AsyncWithFallback",
    "FeatureFlags",
    "WithFallback",
    "bucket",
    "check_feature",
    "check_percentage",
    "is_internal_failure",
    "with_fallback",
]

#: ``bucket(feature, unit_id) -> int`` (0..100): the native function when the extension is
#: loaded, else its mmh3 twin; identical results, so there is no backend argument.
bucket = _backend.bucket_function()
