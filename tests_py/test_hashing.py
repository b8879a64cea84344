"""The PasswordHasher contract on both backends: argon2-cffi interop both ways, needs-rehash,
caps and bad input. Small memory_cost throughout (the defaults take ~150 ms a hash)."""

from __future__ import annotations

import base64

import argon2
import pytest

import sark_native
from sark_native import exceptions as ex
from sark_native._backend import Backend
from sark_native.hashing import PasswordHasher

T, M, P = 1, 64, 1


@pytest.fixture
def hasher(backend: Backend) -> PasswordHasher:
    return sark_native.PasswordHasher(time_cost=T, memory_cost=M, parallelism=P, backend=backend)


def cffi(
    type: argon2.Type = argon2.Type.ID,
    time_cost: int = T,
    memory_cost: int = M,
    parallelism: int = P,
) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(time_cost, memory_cost, parallelism, type=type)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def test_hash_is_a_phc_string_that_verifies(hasher: PasswordHasher, backend: Backend) -> None:
    phc = hasher.hash("correct horse")
    assert phc.startswith(f"$argon2id$v=19$m={M},t={T},p={P}$")
    assert hasher.verify(phc, "correct horse") is True
    assert hasher.verify(phc.encode(), b"correct horse") is True
    assert hasher.hash("correct horse") != phc  # random salt
    assert isinstance(hasher, PasswordHasher)
    assert hasher.backend == backend


def test_defaults_are_argon2_cffi_rfc_9106_with_one_lane(backend: Backend) -> None:
    h = sark_native.PasswordHasher(backend=backend)
    assert (h.time_cost, h.memory_cost, h.parallelism, h.hash_len, h.salt_len) == (
        3,
        65536,
        1,
        32,
        16,
    )
    assert h.max_password_len == 4096
    phc = h.hash("pw")  # the one full-cost hash of the suite
    assert phc.startswith("$argon2id$v=19$m=65536,t=3,p=1$")
    assert argon2.PasswordHasher(parallelism=1).verify(phc, "pw")
    assert not h.check_needs_rehash(phc)


def test_wrong_password_is_a_mismatch(hasher: PasswordHasher) -> None:
    phc = hasher.hash("pw")
    with pytest.raises(ex.VerifyMismatchError):
        hasher.verify(phc, "pW")
    with pytest.raises(ex.VerificationError):  # the base class argon2-cffi callers catch
        hasher.verify(phc, b"")


def test_argon2_cffi_verifies_our_hashes(hasher: PasswordHasher) -> None:
    for password in ("pässwörd ✓", b"\x00\xff binary"):
        phc = hasher.hash(password)
        assert cffi().verify(phc, password)
        with pytest.raises(argon2.exceptions.VerifyMismatchError):
            cffi().verify(phc, "other")


@pytest.mark.parametrize("type_", [argon2.Type.ID, argon2.Type.I, argon2.Type.D])
@pytest.mark.parametrize("params", [{}, {"parallelism": 2, "memory_cost": 128, "time_cost": 2}])
def test_we_verify_argon2_cffi_hashes(
    hasher: PasswordHasher, type_: argon2.Type, params: dict[str, int]
) -> None:
    phc = cffi(type_, **params).hash("pässwörd")
    assert hasher.verify(phc, "pässwörd")
    with pytest.raises(ex.VerifyMismatchError):
        hasher.verify(phc, "password")


def test_other_lengths_and_versions_verify(hasher: PasswordHasher) -> None:
    phc = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1, hash_len=64,
                                salt_len=32).hash("pw")  # fmt: skip
    assert hasher.verify(phc, "pw")
    raw = argon2.low_level.hash_secret_raw(
        b"pw", b"somesaltsomesalt", 1, 64, 1, 32, argon2.Type.ID, version=0x10
    )
    old = f"$argon2id$m=64,t=1,p=1${b64(b'somesaltsomesalt')}${b64(raw)}"  # 1.0: no v=
    assert hasher.verify(old, "pw")
    assert hasher.check_needs_rehash(old)


def test_reference_implementation_vector(hasher: PasswordHasher) -> None:
    # From the reference implementation's test.c (argon2i, v=19, t=2, m=2^16, p=1).
    phc = "$argon2i$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA"
    assert hasher.verify(phc, "password")


@pytest.mark.parametrize(("t", "m", "p"), [(1, 64, 1), (2, 256, 2), (3, 1024, 4)])
def test_openssl_argon2_interoperates_both_ways(
    hasher: PasswordHasher, t: int, m: int, p: int
) -> None:
    # A second, independent implementation: OpenSSL's Argon2id, through cryptography.
    from cryptography.exceptions import InvalidKey
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    kdf = Argon2id(salt=b"0123456789abcdef", length=32, iterations=t, lanes=p, memory_cost=m)
    theirs = kdf.derive_phc_encoded(b"correct horse")
    assert hasher.verify(theirs, "correct horse")
    with pytest.raises(ex.VerifyMismatchError):
        hasher.verify(theirs, "battery staple")
    ours = sark_native.PasswordHasher(
        time_cost=t, memory_cost=m, parallelism=p, backend=hasher.backend
    ).hash("correct horse")
    Argon2id.verify_phc_encoded(b"correct horse", ours)
    with pytest.raises(InvalidKey):
        Argon2id.verify_phc_encoded(b"battery staple", ours)


def test_check_needs_rehash(hasher: PasswordHasher, backend: Backend) -> None:
    assert not hasher.check_needs_rehash(hasher.hash("pw"))
    assert not hasher.check_needs_rehash(cffi().hash("pw"))
    for other in (
        cffi(time_cost=2),
        cffi(memory_cost=128),
        cffi(parallelism=2, memory_cost=64),
        cffi(argon2.Type.I),
        argon2.PasswordHasher(time_cost=T, memory_cost=M, parallelism=P, hash_len=16),
        argon2.PasswordHasher(time_cost=T, memory_cost=M, parallelism=P, salt_len=8),
    ):
        phc = other.hash("pw")
        assert hasher.check_needs_rehash(phc), phc
        assert other.check_needs_rehash(hasher.hash("pw"))
    # argon2-cffi agrees about ours.
    assert not cffi().check_needs_rehash(hasher.hash("pw"))
    with pytest.raises(ex.InvalidHashError):
        hasher.check_needs_rehash("$argon2id$nonsense")


GOOD_SALT, GOOD_HASH = b64(b"somesalt"), b64(b"h" * 32)
MALFORMED = [
    "",
    "$",
    "nonsense",
    "$argon2id",
    "$argon2id$v=19",
    "$argon2id$v=19$m=64,t=1,p=1",
    f"$argon2id$v=19$m=64,t=1,p=1${GOOD_SALT}",
    f"$argon2x$v=19$m=64,t=1,p=1${GOOD_SALT}${GOOD_HASH}",
    f"$scrypt$v=19$m=64,t=1,p=1${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=18$m=64,t=1,p=1${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=19$t=1,m=64,p=1${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=19$m=64,t=1${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=19$m=64,t=1,p=1,k=1${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=19$m=-64,t=1,p=1${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=19$m=064,t=1,p=1${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=19$m=64,t=0,p=1${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=19$m=64,t=1,p=0${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=19$m=7,t=1,p=1${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=19$m=99999999999,t=1,p=1${GOOD_SALT}${GOOD_HASH}",
    f"$argon2id$v=19$m=64,t=1,p=1${b64(b'short')}${GOOD_HASH}",
    f"$argon2id$v=19$m=64,t=1,p=1${GOOD_SALT}${b64(b'abc')}",
    f"$argon2id$v=19$m=64,t=1,p=1${GOOD_SALT}${GOOD_HASH}=",
    f"$argon2id$v=19$m=64,t=1,p=1${GOOD_SALT}$!!!!",
    f"$argon2id$v=19$m=64,t=1,p=1${GOOD_SALT}${GOOD_HASH}$",
    f"$argon2id$v=19$m=64,t=1,p=1${GOOD_SALT}${GOOD_HASH}\n",
    f"$argon2id$v=19$m=64,t=1,p=1${GOOD_SALT}${GOOD_HASH}" + "A" * 5000,
    "$argon2id$v=19$m=64,t=1,p=1$\udcff$\udcff",
    "\x00" * 100,
]


@pytest.mark.parametrize("phc", MALFORMED)
def test_malformed_hashes_are_invalid(hasher: PasswordHasher, phc: str) -> None:
    with pytest.raises(ex.InvalidHashError) as info:
        hasher.verify(phc, "pw")
    assert isinstance(info.value, ValueError)  # argon2-cffi callers catch ValueError
    with pytest.raises(ex.InvalidHashError):
        hasher.check_needs_rehash(phc)
    # The hasher stays usable.
    assert hasher.verify(hasher.hash("pw"), "pw")


def test_malformed_bytes_hashes_are_invalid(hasher: PasswordHasher) -> None:
    with pytest.raises(ex.InvalidHashError):
        hasher.verify(b"$argon2id$\xff\xfe", "pw")


@pytest.mark.parametrize(
    "params",
    [
        "m=262145,t=1,p=1",
        "m=64,t=17,p=1",
        "m=4096,t=1,p=17",
        "m=4294967295,t=4294967295,p=1",
        "m=4294967295,t=1,p=16777215",
    ],
)
def test_parameters_beyond_the_caps_are_invalid(hasher: PasswordHasher, params: str) -> None:
    phc = f"$argon2id$v=19${params}${GOOD_SALT}${GOOD_HASH}"
    with pytest.raises(ex.InvalidHashError, match="caps"):
        hasher.verify(phc, "pw")
    # needs-rehash computes nothing, so caps do not apply there.
    assert hasher.check_needs_rehash(phc)


def test_caps_are_configurable(backend: Backend) -> None:
    strict = sark_native.PasswordHasher(
        time_cost=1, memory_cost=64, backend=backend, max_memory_cost=64
    )
    with pytest.raises(ex.InvalidHashError):
        strict.verify(cffi(memory_cost=128).hash("pw"), "pw")
    assert strict.verify(cffi().hash("pw"), "pw")
    with pytest.raises(ValueError, match="caps"):
        sark_native.PasswordHasher(memory_cost=65536, backend=backend, max_memory_cost=1024)


@pytest.mark.parametrize("password", [None, 1, 1.5, ["pw"], bytearray(b"pw"), memoryview(b"pw")])
def test_non_str_bytes_password_is_a_type_error(hasher: PasswordHasher, password: object) -> None:
    with pytest.raises(TypeError):
        hasher.hash(password)  # type: ignore[arg-type]
    phc = hasher.hash("pw")
    with pytest.raises(TypeError):
        hasher.verify(phc, password)  # type: ignore[arg-type]
    assert hasher.verify(phc, "pw")


@pytest.mark.parametrize("phc", [None, 1, ["$argon2id$"]])
def test_non_str_bytes_hash_is_a_type_error(hasher: PasswordHasher, phc: object) -> None:
    with pytest.raises(TypeError):
        hasher.verify(phc, "pw")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hasher.check_needs_rehash(phc)  # type: ignore[arg-type]


def test_password_length_cap_applies_to_hash_and_verify(
    hasher: PasswordHasher, backend: Backend
) -> None:
    at_cap = "a" * 4096
    phc = hasher.hash(at_cap)
    assert hasher.verify(phc, at_cap.encode())
    for too_long in ("a" * 4097, b"a" * 4097, "é" * 2049):  # the cap counts UTF-8 bytes
        with pytest.raises(ValueError, match="4096"):
            hasher.hash(too_long)
        with pytest.raises(ValueError, match="4096"):
            hasher.verify(phc, too_long)
    small = sark_native.PasswordHasher(time_cost=T, memory_cost=M, max_password_len=8,
                                       backend=backend)  # fmt: skip
    with pytest.raises(ValueError, match="longer than 8"):
        small.hash("123456789")
    assert small.verify(small.hash("12345678"), "12345678")
    assert hasher.verify(phc, at_cap)


def test_lone_surrogates_are_a_value_error(hasher: PasswordHasher) -> None:
    with pytest.raises(UnicodeEncodeError):
        hasher.hash("\udcff")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time_cost": 0},
        {"time_cost": -1},
        {"parallelism": 0},
        {"memory_cost": 7},
        {"memory_cost": 15, "parallelism": 2},
        {"hash_len": 3},
        {"salt_len": 7},
        {"salt_len": 2000},
        {"time_cost": 17},
        {"memory_cost": 262145},
        {"parallelism": 17, "memory_cost": 1024},
        {"max_password_len": 0},
        {"memory_cost": 2**40},
    ],
)
def test_bad_constructor_parameters_are_value_errors(
    backend: Backend, kwargs: dict[str, int]
) -> None:
    with pytest.raises(ValueError, match=r"cost|parallelism|_len|caps"):
        sark_native.PasswordHasher(backend=backend, **kwargs)


def test_backend_argument(backend: Backend) -> None:
    with pytest.raises(ValueError, match="backend"):
        sark_native.PasswordHasher(backend="fast")  # type: ignore[arg-type]
    assert "PasswordHasher(" in repr(sark_native.PasswordHasher(memory_cost=64, backend=backend))


# Rust against Python; in the run with the extension disabled, Python against itself.
PAIR: tuple[Backend, Backend] = (
    ("rust", "python")
    if sark_native.RUST_AVAILABLE
    else (
        "python",
        "python",
    )
)


def test_both_backends_agree_on_each_others_hashes() -> None:
    rust = sark_native.PasswordHasher(time_cost=T, memory_cost=M, backend=PAIR[0])
    py = sark_native.PasswordHasher(time_cost=T, memory_cost=M, backend=PAIR[1])
    assert py.verify(rust.hash("pw"), "pw")
    assert rust.verify(py.hash("pw"), "pw")
    for phc in MALFORMED:
        errors = []
        for h in (rust, py):
            try:
                h.verify(phc, "pw")
            except ex.VerificationError as exc:
                errors.append(type(exc))
        assert errors[0] is errors[1], phc


def test_python_path_without_argon2_cffi_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "argon2", None)  # makes `import argon2` fail
    with pytest.raises(ex.BackendUnavailableError, match="argon2-cffi"):
        sark_native.PasswordHasher(memory_cost=64, backend="python")
