"""A battery of forged and malformed tokens and bad keys, on both backends: each raises exactly
the documented exception class (``type(exc) is ...``, not just a subclass)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sark_native import Ed25519Signer, KeySet
from sark_native._backend import Backend
from sark_native.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    TokenError,
)
from sark_native.tokens import MAX_TOKEN_SIZE
from tokens_helpers import NOW, RFC8037_JWK, SMALL_ORDER, b64d, b64e, forge

FUTURE = int(NOW) + 3600
GOOD = {"exp": FUTURE, "sub": "alice"}

Maker = Callable[[Ed25519Signer], "str | bytes"]


def _good(s: Ed25519Signer) -> str:
    return s.encode(GOOD)


def _header(s: Ed25519Signer, **extra: Any) -> dict[str, Any]:
    return {"alg": "EdDSA", "typ": "JWT", "kid": s.kid, **extra}


def _segments(s: Ed25519Signer) -> list[str]:
    return _good(s).split(".")


def _tamper_payload(s: Ed25519Signer) -> str:
    h, _, sig = _segments(s)
    payload = b64e(b'{"exp":9999999999,"sub":"admin"}')
    return f"{h}.{payload}.{sig}"


def _tamper_signature(s: Ed25519Signer) -> str:
    h, p, sig = _segments(s)
    raw = bytearray(b64d(sig))
    raw[5] ^= 0x01
    return f"{h}.{p}.{b64e(bytes(raw))}"


def _flip_s(s: Ed25519Signer) -> str:
    # S + L (non-canonical scalar): a classic malleability forgery.
    h, p, sig = _segments(s)
    raw = b64d(sig)
    order = 2**252 + 27742317777372353535851937790883648493
    big = (int.from_bytes(raw[32:], "little") + order).to_bytes(32, "little")
    return f"{h}.{p}.{b64e(raw[:32] + big)}"


def _small_order_r(i: int) -> Maker:
    def make(s: Ed25519Signer) -> str:
        h, p, sig = _segments(s)
        return f"{h}.{p}.{b64e(SMALL_ORDER[i] + b64d(sig)[32:])}"

    return make


def _nested(levels: int) -> bytes:
    """A JSON object holding ``levels`` nested arrays: ``levels + 1`` levels in all."""
    return b'{"alg":"EdDSA","exp":4000000000,"n":' + b"[" * levels + b"1" + b"]" * levels + b"}"


def _with_string(escaped: str) -> bytes:
    return b'{"exp":4000000000,"s":"' + escaped.encode() + b'"}'


def _other_key(s: Ed25519Signer) -> str:
    other = Ed25519Signer.generate(kid=s.kid, backend="python")
    return other.encode(GOOD)


def _trailing_bits(s: Ed25519Signer) -> str:
    h, p, sig = _segments(s)
    # 64 bytes -> 86 characters: the last one holds 2 bits and 4 unused (zero) bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    return f"{h}.{p}.{sig[:-1]}{alphabet[last | 1]}"


CASES: list[tuple[str, Maker, type[TokenError]]] = [
    # --- structure -> DecodeError
    ("empty", lambda s: "", DecodeError),
    ("one segment", lambda s: _segments(s)[0], DecodeError),
    ("two segments", lambda s: ".".join(_segments(s)[:2]), DecodeError),
    ("four segments", lambda s: _good(s) + ".e30", DecodeError),
    ("five segments (JWE shape)", lambda s: "a.b.c.d.e", DecodeError),
    ("padding in header", lambda s: "{}=.{}.{}".format(*_segments(s)), DecodeError),
    ("padding in signature", lambda s: _good(s) + "==", DecodeError),
    ("standard base64 alphabet", lambda s: "{}.{}+/.{}".format(*_segments(s)), DecodeError),
    ("bad base64 character", lambda s: "{}.{}!.{}".format(*_segments(s)), DecodeError),
    ("whitespace inside", lambda s: _good(s).replace(".", ". ", 1), DecodeError),
    ("length 4n+1", lambda s: _good(s) + "AAA", DecodeError),
    ("non-canonical trailing bits", _trailing_bits, DecodeError),
    ("oversized", lambda s: "a" * (MAX_TOKEN_SIZE + 1), DecodeError),
    (
        "oversized but well-formed",
        lambda s: s.encode({"exp": FUTURE, "pad": "x" * MAX_TOKEN_SIZE}),
        DecodeError,
    ),
    ("non-ASCII token", lambda s: _good(s) + "é", DecodeError),
    ("lone surrogate in token", lambda s: _good(s)[:-1] + "\ud800", DecodeError),
    ("header not JSON", lambda s: forge(s, b"not json", GOOD), DecodeError),
    ("header a JSON list", lambda s: forge(s, [1, 2], GOOD), DecodeError),
    ("header a JSON string", lambda s: forge(s, '"EdDSA"', GOOD), DecodeError),
    ("header not UTF-8", lambda s: forge(s, b'{"alg":"EdDSA","x":"\xff"}', GOOD), DecodeError),
    ("header without alg", lambda s: forge(s, {"typ": "JWT"}, GOOD), DecodeError),
    ("alg not a string", lambda s: forge(s, {"alg": ["EdDSA"]}, GOOD), DecodeError),
    ("kid not a string", lambda s: forge(s, {"alg": "EdDSA", "kid": 1}, GOOD), DecodeError),
    ("payload not JSON", lambda s: forge(s, _header(s), b"{"), DecodeError),
    ("payload a JSON list", lambda s: forge(s, _header(s), [GOOD]), DecodeError),
    ("payload a number", lambda s: forge(s, _header(s), b"1"), DecodeError),
    ("payload null", lambda s: forge(s, _header(s), b"null"), DecodeError),
    ("payload with NaN", lambda s: forge(s, _header(s), b'{"exp":NaN}'), DecodeError),
    ("payload with 1e400", lambda s: forge(s, _header(s), b'{"exp":1e400}'), DecodeError),
    ("payload UTF-16", lambda s: forge(s, _header(s), '{"exp":1}'.encode("utf-16")), DecodeError),
    ("payload nested 128 deep", lambda s: forge(s, _header(s), _nested(127)), DecodeError),
    ("header nested 128 deep", lambda s: forge(s, _nested(127), GOOD), DecodeError),
    ("lone high surrogate", lambda s: forge(s, _header(s), _with_string("\\ud800")), DecodeError),
    ("lone low surrogate", lambda s: forge(s, _header(s), _with_string("\\udc00")), DecodeError),
    (
        "reversed surrogates",
        lambda s: forge(s, _header(s), _with_string("\\udc00\\ud800")),
        DecodeError,
    ),
    (
        "surrogate in a key",
        lambda s: forge(s, _header(s), b'{"exp":4000000000,"\\ud800":1}'),
        DecodeError,
    ),
    ("exp a string", lambda s: forge(s, _header(s), {"exp": str(FUTURE)}), DecodeError),
    ("exp a bool", lambda s: forge(s, _header(s), {"exp": True}), DecodeError),
    ("exp null", lambda s: forge(s, _header(s), {"exp": None}), DecodeError),
    ("nbf a list", lambda s: forge(s, _header(s), {"exp": FUTURE, "nbf": [1]}), DecodeError),
    ("iat an object", lambda s: forge(s, _header(s), {"exp": FUTURE, "iat": {}}), DecodeError),
    # --- forgeries -> InvalidSignatureError
    ("alg none", lambda s: forge(s, {"alg": "none"}, GOOD), InvalidSignatureError),
    (
        "alg none, empty signature",
        lambda s: b64e(b'{"alg":"none"}') + "." + _segments(s)[1] + ".",
        InvalidSignatureError,
    ),
    ("alg None (case)", lambda s: forge(s, {"alg": "None"}, GOOD), InvalidSignatureError),
    ("alg HS256", lambda s: forge(s, _header(s, alg="HS256"), GOOD), InvalidSignatureError),
    ("alg RS256", lambda s: forge(s, _header(s, alg="RS256"), GOOD), InvalidSignatureError),
    ("alg ES256", lambda s: forge(s, _header(s, alg="ES256"), GOOD), InvalidSignatureError),
    ("alg Ed448", lambda s: forge(s, _header(s, alg="Ed448"), GOOD), InvalidSignatureError),
    ("alg eddsa (case)", lambda s: forge(s, _header(s, alg="eddsa"), GOOD), InvalidSignatureError),
    ("crit", lambda s: forge(s, _header(s, crit=["exp"]), GOOD), InvalidSignatureError),
    (
        "crit b64",
        lambda s: forge(s, _header(s, crit=["b64"], b64=False), GOOD),
        InvalidSignatureError,
    ),
    ("empty crit", lambda s: forge(s, _header(s, crit=[]), GOOD), InvalidSignatureError),
    ("tampered payload", _tamper_payload, InvalidSignatureError),
    ("tampered signature", _tamper_signature, InvalidSignatureError),
    ("S + L (malleated)", _flip_s, InvalidSignatureError),
    ("empty signature", lambda s: ".".join(_segments(s)[:2]) + ".", InvalidSignatureError),
    (
        "short signature",
        lambda s: "{}.{}.{}".format(*_segments(s)[:2], b64e(b"\0" * 63)),
        InvalidSignatureError,
    ),
    (
        "zero signature",
        lambda s: "{}.{}.{}".format(*_segments(s)[:2], b64e(b"\0" * 64)),
        InvalidSignatureError,
    ),
    *[(f"small-order R #{i}", _small_order_r(i), InvalidSignatureError) for i in range(8)],
    ("another key, same kid", _other_key, InvalidSignatureError),
    ("wrong kid", lambda s: forge(s, _header(s, kid="nope"), GOOD), InvalidSignatureError),
    # --- claims
    ("expired", lambda s: s.encode({"exp": int(NOW)}), ExpiredSignatureError),
    ("expired float", lambda s: s.encode({"exp": NOW - 0.5}), ExpiredSignatureError),
    ("nbf in the future", lambda s: s.encode({**GOOD, "nbf": NOW + 60}), ImmatureSignatureError),
    ("iat in the future", lambda s: s.encode({**GOOD, "iat": NOW + 60}), ImmatureSignatureError),
    ("no exp", lambda s: s.encode({"sub": "a"}), MissingRequiredClaimError),
    ("aud not expected", lambda s: s.encode({**GOOD, "aud": "api"}), InvalidAudienceError),
]


@pytest.mark.parametrize(("name", "make", "error"), CASES, ids=[c[0] for c in CASES])
def test_bad_token_raises_exactly(
    backend: Backend, name: str, make: Maker, error: type[TokenError]
) -> None:
    s = Ed25519Signer.generate(kid="k", backend=backend)
    token = make(s)
    with pytest.raises(TokenError) as info:
        s.decode(token, now=NOW)
    assert type(info.value) is error, f"{name}: {info.value!r}"
    ks = KeySet.from_signers([s], backend=backend)
    with pytest.raises(error):
        ks.decode(token, now=NOW)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"audience": "api"}, InvalidAudienceError),
        ({"issuer": "other"}, InvalidIssuerError),
        ({"audience": "x", "issuer": "me"}, InvalidAudienceError),
    ],
)
def test_bad_audience_or_issuer(
    backend: Backend, kwargs: dict[str, Any], error: type[TokenError]
) -> None:
    s = Ed25519Signer.generate(backend=backend)
    token = s.encode({**GOOD, "aud": "web", "iss": "me"})
    with pytest.raises(TokenError) as info:
        s.decode(token, now=NOW, **kwargs)
    assert type(info.value) is error


@pytest.mark.parametrize("token", [None, 1, ["a.b.c"], object()])
def test_a_token_of_the_wrong_type_is_a_type_error(backend: Backend, token: Any) -> None:
    s = Ed25519Signer.generate(backend=backend)
    with pytest.raises(TypeError):
        s.decode(token)


def _ec_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _x25519_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    return x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _encrypted_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )


@pytest.mark.parametrize(
    "make_pem",
    [
        _ec_pem,
        _x25519_pem,
        _encrypted_pem,
        lambda: Ed25519Signer.generate(backend="python").public_pem(),
        lambda: b"garbage",
        lambda: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
    ids=["ec-p256", "x25519", "encrypted", "public-pem", "garbage", "truncated"],
)
def test_from_pem_refuses_other_keys(backend: Backend, make_pem: Callable[[], Any]) -> None:
    with pytest.raises(ValueError, match="Ed25519 private key"):
        Ed25519Signer.from_pem(make_pem(), backend=backend)


X = RFC8037_JWK["x"]


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": "P-256", "x": X, "d": RFC8037_JWK["d"]},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        {**RFC8037_JWK, "crv": "X25519"},
        {**RFC8037_JWK, "crv": "Ed448"},
        {**RFC8037_JWK, "kty": 1},
        {"crv": "Ed25519", "x": X, "d": RFC8037_JWK["d"]},
        {"kty": "OKP", "x": X, "d": RFC8037_JWK["d"]},
        {"kty": "OKP", "crv": "Ed25519", "x": X},  # public only: a signer needs d
        {**RFC8037_JWK, "d": RFC8037_JWK["d"] + "="},
        {**RFC8037_JWK, "d": "AAAA"},
        {**RFC8037_JWK, "x": "AAAA"},
        {**RFC8037_JWK, "x": b64e(b"\x01" * 32)},  # x of another key
        {**RFC8037_JWK, "alg": "RS256"},
        {**RFC8037_JWK, "use": "enc"},
        {**RFC8037_JWK, "x": b64e(SMALL_ORDER[4])},
    ],
)
def test_from_jwk_refuses_other_keys(backend: Backend, jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"JWK|public key"):
        Ed25519Signer.from_jwk(jwk, backend=backend)


@pytest.mark.parametrize("point", SMALL_ORDER, ids=[p.hex()[:8] for p in SMALL_ORDER])
def test_small_order_public_keys_are_refused(backend: Backend, point: bytes) -> None:
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64e(point), "kid": "weak"}
    with pytest.raises(ValueError, match="small-order"):
        KeySet.from_jwks({"keys": [jwk]}, backend=backend)


def test_non_canonical_small_order_keys_are_refused(backend: Backend) -> None:
    # y = 1 + p and y = p (non-canonical encodings of small-order points) do not slip through.
    p = 2**255 - 19
    for y in (p + 1, p):
        point = y.to_bytes(32, "little")
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64e(point)}
        with pytest.raises(ValueError, match="public key"):
            KeySet.from_jwks({"keys": [jwk]}, backend=backend)


def test_verify_is_false_for_small_order_r(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    sig = s.sign(b"m")
    for point in SMALL_ORDER:
        assert s.verify(b"m", point + sig[32:]) is False


def test_nesting_and_surrogates_at_the_limit_are_accepted(backend: Backend) -> None:
    s = Ed25519Signer.generate(kid="k", backend=backend)
    deep = s.decode(forge(s, _header(s), _nested(126)), now=NOW)
    assert deep["exp"] == 4000000000
    header_deep = forge(s, _nested(126).replace(b'"alg":"EdDSA"', b'"alg":"EdDSA","kid":"k"'), GOOD)
    assert s.decode(header_deep, now=NOW) == GOOD
    pair = s.decode(forge(s, _header(s), _with_string("\\ud83d\\udd11")), now=NOW)
    assert pair["s"] == "\U0001f511"
    # An escaped backslash before "ud800" is plain text, not a surrogate.
    text = s.decode(forge(s, _header(s), _with_string("\\\\ud800")), now=NOW)
    assert text["s"] == "\\ud800"
    brackets = s.decode(forge(s, _header(s), _with_string("[" * 200)), now=NOW)
    assert brackets["s"] == "[" * 200
