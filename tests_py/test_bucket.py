"""Rollout bucketing: Unleash's published values, parity of the native and mmh3 paths on many
inputs (non-ASCII included), uniformity, bad input."""

from __future__ import annotations

import random

import pytest

import sark_native
from sark_native import _backend
from sark_native._fallback.bucket import bucket as py_bucket
from sark_native.flags import bucket

BUCKETS = {"python": py_bucket}
if sark_native.RUST_AVAILABLE:
    BUCKETS["rust"] = _backend.native().bucket
IMPLS = sorted(BUCKETS)


def test_the_public_bucket_is_the_native_one_when_loaded() -> None:
    assert bucket is (_backend.native().bucket if sark_native.RUST_AVAILABLE else py_bucket)


@pytest.mark.parametrize("impl", IMPLS)
def test_unleash_normalized_values(impl: str) -> None:
    # Unleash's clients (node, java, go) share these: normalizedValue("123", "gr1") == 73,
    # normalizedValue("999", "groupX") == 25, hashing "{groupId}:{userId}"; bucket = that - 1.
    f = BUCKETS[impl]
    assert f("gr1", "123") == 72
    assert f("groupX", "999") == 24


def _inputs() -> list[tuple[str, str]]:
    rng = random.Random(7)
    alphabet = "abcXYZ019:-_ üéßøΩжщ中文字😀\u0301\x00\t"
    out = [("rust_opa", f"user-{i}") for i in range(2000)]
    for _ in range(3000):
        feature = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        unit = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        out.append((feature, unit))
    out += [("f", ""), ("ü", "😀" * 100), ("x" * 300, "y" * 300), ("a:b", "c:d")]
    return out


def test_rust_and_python_agree_on_every_input() -> None:
    cases = _inputs()
    results = {impl: [BUCKETS[impl](f, u) for f, u in cases] for impl in IMPLS}
    assert all(0 <= b < 100 for b in results["python"])
    for impl in IMPLS:
        assert results[impl] == results["python"], impl


@pytest.mark.parametrize("impl", IMPLS)
def test_buckets_are_uniform(impl: str) -> None:
    f = BUCKETS[impl]
    n = 50_000
    counts = [0] * 100
    for i in range(n):
        counts[f("checkout", f"u{i}")] += 1
    expected = n / 100
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 148, (chi2, counts)  # 99 degrees of freedom, 99.9th percentile


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input(impl: str) -> None:
    f = BUCKETS[impl]
    with pytest.raises(ValueError, match="feature"):
        f("", "u")
    for bad in [None, 1, b"u", 1.5]:
        with pytest.raises(TypeError):
            f("feature", bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            f(bad, "u")  # type: ignore[arg-type]
    # Lone surrogates are not UTF-8: both paths raise UnicodeEncodeError (a ValueError).
    with pytest.raises(UnicodeEncodeError):
        f("feature", "a\ud800")
    with pytest.raises(UnicodeEncodeError):
        f("\udfff", "u")


@pytest.mark.parametrize("impl", IMPLS)
def test_str_subclasses_hash_like_str(impl: str) -> None:
    class Name(str):
        pass

    f = BUCKETS[impl]
    assert f(Name("gr1"), Name("123")) == 72
