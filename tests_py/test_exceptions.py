"""The exception tree: defined once in Python, raised by both backends, catchable as the
standard exceptions callers already handle."""

from __future__ import annotations

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
