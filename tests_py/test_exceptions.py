"""The exception tree: defined once in Python, raised by both backends, catchable as the
standard exceptions callers already handle."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import sark_native
from sark_native import exceptions as ex
from sark_native._backend import Backend


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (ex.BackendUnavailableError, (ex.SarkNativeError, RuntimeError)),
        (ex.CacheError, (ex.SarkNativeError, RuntimeError)),
        (ex.OverloadedError, (ex.SarkNativeError,)),
        (ex.PolicyCompileError, (ex.PolicyError, ex.SarkNativeError)),
        (ex.PolicyNotFoundError, (ex.PolicyError,)),
        (ex.PolicyEvaluationError, (ex.PolicyError,)),
        (ex.VerifyMismatchError, (ex.VerificationError,)),
        (ex.InvalidHashError, (ex.VerificationError, ValueError)),
        (ex.TokenError, (ex.SarkNativeError, ValueError)),
        (ex.DecodeError, (ex.TokenError,)),
        (ex.InvalidSignatureError, (ex.TokenError,)),
        (ex.ExpiredSignatureError, (ex.TokenError,)),
        (ex.ImmatureSignatureError, (ex.TokenError,)),
        (ex.InvalidAudienceError, (ex.TokenError,)),
        (ex.InvalidIssuerError, (ex.TokenError,)),
        (ex.MissingRequiredClaimError, (ex.TokenError,)),
        (ex.SidecarError, (ex.SarkNativeError, ConnectionError)),
        (ex.SidecarUnavailableError, (ex.SidecarError,)),
        (ex.SidecarTimeoutError, (ex.SidecarError, TimeoutError)),
        (ex.SidecarProtocolError, (ex.SidecarError,)),
        (ex.SidecarRemoteError, (ex.SidecarError,)),
    ],
)
def test_tree(cls: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    for base in bases:
        assert issubclass(cls, base), (cls, base)
    assert cls.__module__ == "sark_native.exceptions"


def test_every_public_name_is_exported() -> None:
    for name in ex.__all__:
        assert isinstance(getattr(ex, name), type)


def test_remote_error_carries_the_remote_type_and_message() -> None:
    e = ex.SidecarRemoteError("ValueError", "bad input")
    assert e.remote_type == "ValueError"
    assert e.remote_message == "bad input"
    assert "ValueError" in str(e)


# One case per variant of the Rust core's error enum (src/core/error.rs), through the binding's
# single mapping function, on both backends.


def test_invalid_argument_maps_to_value_error(backend: Backend) -> None:
    with pytest.raises(ValueError, match="max_size"):
        sark_native.Cache(max_size=0, backend=backend)
    with pytest.raises(ValueError, match="ttl"):
        sark_native.Cache(ttl=-1.0, backend=backend)


def test_cache_error_is_the_python_class(backend: Backend) -> None:
    c = sark_native.Cache(backend=backend)

    def reenter() -> object:
        return c.get_or_set("k", lambda: 1)

    with pytest.raises(ex.CacheError) as info:
        c.get_or_set("k", reenter)
    assert type(info.value) is ex.CacheError
    assert "k" not in c


def test_hashing_errors_are_the_python_classes(backend: Backend) -> None:
    # InvalidHash, VerifyMismatch and Overloaded (tests_py/test_hashing_async.py) reach Python;
    # Verification and Internal have no input that triggers them (Argon2 itself failing, a panic).
    h = sark_native.PasswordHasher(time_cost=1, memory_cost=64, backend=backend)
    with pytest.raises(ex.InvalidHashError) as invalid:
        h.verify("$argon2id$x", "pw")
    assert type(invalid.value) is ex.InvalidHashError
    with pytest.raises(ex.VerifyMismatchError) as mismatch:
        h.verify(h.hash("a"), "b")
    assert type(mismatch.value) is ex.VerifyMismatchError


@pytest.mark.parametrize(
    ("make", "error"),
    [
        ("public-only", ex.TokenError),
        ("malformed", ex.DecodeError),
        ("forged", ex.InvalidSignatureError),
        ("expired", ex.ExpiredSignatureError),
        ("immature", ex.ImmatureSignatureError),
        ("audience", ex.InvalidAudienceError),
        ("issuer", ex.InvalidIssuerError),
        ("missing", ex.MissingRequiredClaimError),
    ],
)
def test_token_errors_are_the_python_classes(backend: Backend, make: str, error: type) -> None:
    s = sark_native.Ed25519Signer.generate(backend=backend)
    public = sark_native.KeySet.from_jwks({"keys": [s.public_jwk()]}, backend=backend)
    other = sark_native.Ed25519Signer.generate(kid=s.kid, backend=backend)
    far = 4_000_000_000
    calls: dict[str, Callable[[], object]] = {
        "public-only": lambda: public.encode({}),
        "malformed": lambda: s.decode("a.b"),
        "forged": lambda: s.decode(other.encode({"exp": far})),
        "expired": lambda: s.decode(s.encode({"exp": 1})),
        "immature": lambda: s.decode(s.encode({"exp": far, "nbf": far - 1})),
        "audience": lambda: s.decode(s.encode({"exp": far, "aud": "x"})),
        "issuer": lambda: s.decode(s.encode({"exp": far, "iss": "x"}), issuer="y"),
        "missing": lambda: s.decode(s.encode({})),
    }
    with pytest.raises(ex.TokenError) as info:
        calls[make]()
    assert type(info.value) is error
    assert isinstance(info.value, ValueError)
