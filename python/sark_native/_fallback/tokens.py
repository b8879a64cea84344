"""The pure-Python twin of the Rust token path: the same API, checks, errors and bytes.

Keys come and go through joserfc (PEM import and export, the RFC 7638 thumbprint) and the
``cryptography`` package it is built on (Ed25519 signatures); the JWS layer is written here so that
its serialization and its strict decoding match ``src/core/tokens`` step for step (see
``docs/tokens.md``). joserfc's JWS functions are not used: they would warn about the ``EdDSA``
name (RFC 9864 ``SecurityWarning``), which must never reach callers, and they decode more
leniently than the contract allows.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from ..exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    TokenError,
)

__all__ = ["MAX_TOKEN_SIZE", "PyEd25519Signer", "PyKeySet", "token_metrics"]

#: The largest token ``decode`` looks at, in bytes (as ``core::tokens::MAX_TOKEN_SIZE``).
MAX_TOKEN_SIZE: Final = 16 * 1024
#: Nesting deeper than this in claims or headers is refused (``ValueError``).
MAX_DEPTH: Final = 64
ALGS: Final = ("EdDSA", "Ed25519")
RESERVED_HEADERS: Final = ("alg", "typ", "kid")
#: Rejection reasons, as ``core::tokens::metrics::REASONS``.
REASONS: Final = (
    "decode",
    "invalid_signature",
    "expired",
    "immature",
    "invalid_audience",
    "invalid_issuer",
    "missing_claim",
    "other",
)
_REASON_OF: Final[dict[type[Exception], str]] = {
    DecodeError: "decode",
    InvalidSignatureError: "invalid_signature",
    ExpiredSignatureError: "expired",
    ImmatureSignatureError: "immature",
    InvalidAudienceError: "invalid_audience",
    InvalidIssuerError: "invalid_issuer",
    MissingRequiredClaimError: "missing_claim",
}
_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1

# --- counters -------------------------------------------------------------------------------------

_metrics_lock = threading.Lock()
_issued = 0
_verified = 0
_rejected: dict[str, int] = dict.fromkeys(REASONS, 0)


def _count_issued() -> None:
    global _issued
    with _metrics_lock:
        _issued += 1


def _count_verified() -> None:
    global _verified
    with _metrics_lock:
        _verified += 1


def _count_rejected(exc: Exception) -> None:
    reason = _REASON_OF.get(type(exc), "other")
    with _metrics_lock:
        _rejected[reason] += 1


def token_metrics() -> dict[str, Any]:
    """``{"issued", "verified", "rejected": {reason: count}}`` of the Python token path."""
    with _metrics_lock:
        return {"issued": _issued, "verified": _verified, "rejected": dict(_rejected)}


# --- Ed25519 point checks (what dalek's is_weak / verify_strict refuse) -----------------------

_P: Final = 2**255 - 19
_D: Final = (-121665 * pow(121666, _P - 2, _P)) % _P
_Y_MASK: Final = (1 << 255) - 1


def _x_squared(encoding: bytes) -> tuple[int, int] | None:
    """``(y, x**2)`` of a compressed Edwards point, or ``None`` when it does not decompress."""
    y = (int.from_bytes(encoding, "little") & _Y_MASK) % _P
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    if x2 != 0 and pow(x2, (_P - 1) // 2, _P) != 1:
        return None
    return y, x2


#: The eight small-order points (the identity and the torsion points of orders 2, 4 and 8).
_SMALL_ORDER_ENCODINGS: Final = (
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
)
#: Their y coordinates mod p: a point is small-order exactly when its y is one of these, so
#: comparing the reduced y also catches the non-canonical encodings (y + p, either sign bit) that
#: dalek decodes to the same points.
_SMALL_ORDER_Y: Final = frozenset(
    (int.from_bytes(bytes.fromhex(h), "little") & _Y_MASK) % _P for h in _SMALL_ORDER_ENCODINGS
)


def _is_small_order(encoding: bytes) -> bool:
    """Whether a compressed point is one of the small-order points (what dalek's ``is_weak``
    and ``verify_strict`` refuse), in any encoding."""
    return (int.from_bytes(encoding, "little") & _Y_MASK) % _P in _SMALL_ORDER_Y


def _public_key_from_bytes(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    if _x_squared(raw) is None:
        raise ValueError("not a valid Ed25519 public key (the point does not decompress)")
    if _is_small_order(raw):
        raise ValueError("refusing a small-order Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


# --- base64url and JSON, as the Rust path does them -------------------------------------------

_B64URL = re.compile(rb"[A-Za-z0-9_-]*\Z")


def _b64e(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _b64d_strict(segment: bytes) -> bytes | None:
    """Strict base64url without padding, canonical trailing bits; ``None`` when it is not."""
    if len(segment) % 4 == 1 or not _B64URL.match(segment):
        return None
    try:
        raw = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except binascii.Error:  # pragma: no cover - excluded by the checks above
        return None
    if _b64e(raw) != segment:
        return None
    return raw


def _b64d(segment: bytes, what: str) -> bytes:
    raw = _b64d_strict(segment)
    if raw is None:
        raise DecodeError(f"the {what} is not base64url without padding")
    return raw


def _check_json(value: object, depth: int) -> None:
    """Refuses what the Rust path refuses: the same types, ranges and depth, in the same order."""
    if depth > MAX_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, str):
        if isinstance(value, str):
            value.encode("utf-8")  # lone surrogates: UnicodeEncodeError (a ValueError)
        return
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _I64_MIN <= value <= _I64_MAX:
            raise ValueError("integers in tokens must fit in 64 bits (-2**63 <= n < 2**63)")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not allowed in JSON (NaN and Infinity are not)")
        return
    if isinstance(value, dict):
        _check_object(value, depth)
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_json(item, depth + 1)
        return
    raise TypeError(f"a {type(value).__name__} is not JSON serializable")


def _check_object(obj: dict[Any, Any], depth: int) -> None:
    for k, v in obj.items():
        if not isinstance(k, str):
            raise TypeError(f"JSON object keys must be str, not {type(k).__name__}")
        k.encode("utf-8")
        _check_json(v, depth + 1)


def _mapping_arg(obj: object, what: str) -> dict[str, Any]:
    if isinstance(obj, dict):
        out = obj
    elif isinstance(obj, Mapping):
        out = dict(obj)
    else:
        raise TypeError(f"{what} must be a mapping, not {type(obj).__name__}")
    _check_object(out, 0)
    return out


def _dumps(obj: dict[str, Any]) -> bytes:
    # The serialization both backends sign (docs/tokens.md): compact, UTF-8, keys in order.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _int_like_serde(text: str) -> int | float:
    # serde_json without arbitrary precision: i64 / u64, else the nearest float.
    value = int(text)
    if _I64_MIN <= value < 2**64:
        return value
    return float(text)


_decoder = json.JSONDecoder(
    parse_constant=_no_constant, parse_float=_finite_float, parse_int=_int_like_serde
)


#: serde_json's recursion limit as the Rust path meets it: 127 levels, the outer object included.
MAX_JSON_DEPTH: Final = 127
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _depth_within_limit(text: str) -> bool:
    """Whether no array/object is nested deeper than serde_json allows."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:  # the common case, in C
        return True
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _strings_are_unicode(value: object) -> bool:
    """Whether every string (keys too) is valid Unicode: Python's json accepts unpaired
    surrogate escapes (``"\\ud800"``), serde_json does not."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_strings_are_unicode(k) and _strings_are_unicode(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_strings_are_unicode(v) for v in value)
    return True


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    # The same JSON the Rust path (serde_json) accepts: UTF-8, no NaN/Infinity, numbers within
    # f64, at most 127 levels deep, no unpaired surrogate escapes.
    error = DecodeError(f"the {what} is not valid UTF-8 JSON")
    try:
        text = raw.decode("utf-8")
        if not _depth_within_limit(text):
            raise error
        value = _decoder.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and not _strings_are_unicode(value):
        raise error
    if not isinstance(value, dict):
        raise DecodeError(f"the {what} is not a JSON object")
    return value


# --- arguments ----------------------------------------------------------------------------------


def _seconds_arg(obj: object, what: str) -> float:
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        total_seconds = getattr(obj, "total_seconds", None)
        if total_seconds is not None and not isinstance(obj, bool):
            return float(total_seconds())
        raise TypeError(f"{what} must be a number of seconds, not {type(obj).__name__}")
    return float(obj)


def _float_arg(obj: object, what: str) -> float:
    # As PyO3's f64 extraction: a float, an int, or anything with __float__ / __index__.
    if isinstance(obj, float):
        return obj
    if isinstance(obj, (str, bytes, bytearray)) or not (
        hasattr(obj, "__float__") or hasattr(obj, "__index__")
    ):
        raise TypeError(f"{what} must be a number, not {type(obj).__name__}")
    return float(obj)  # type: ignore[arg-type]


def _now_arg(now: object) -> float:
    return time.time() if now is None else _seconds_arg(now, "now")


def _names_arg(obj: object, what: str) -> list[str] | None:
    if obj is None:
        return None
    if isinstance(obj, str):
        return [obj]
    if not isinstance(obj, Iterable):
        raise TypeError(f"{what} must be a str or an iterable of str, not {type(obj).__name__}")
    out = []
    for item in obj:
        if not isinstance(item, str):
            raise TypeError(f"{what} must hold str, not {type(item).__name__}")
        out.append(item)
    return out


def _kid_arg(kid: object) -> str | None:
    if kid is None or isinstance(kid, str):
        return kid
    raise TypeError(f"kid must be a str, not {type(kid).__name__}")


def _bytes_arg(obj: object, what: str) -> bytes:
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    raise TypeError(f"{what} must be bytes, not {type(obj).__name__}")


def _token_arg(token: object) -> bytes:
    if isinstance(token, str):
        try:
            return token.encode("utf-8")
        except UnicodeEncodeError:
            exc = DecodeError("the token is not ASCII")
            _count_rejected(exc)
            raise exc from None
    if isinstance(token, (bytes, bytearray)):
        return bytes(token)
    raise TypeError(f"token must be str or bytes, not {type(token).__name__}")


def _whole_seconds(t: float) -> int | float:
    t = math.floor(t)
    return int(t) if abs(t) < 9.0e15 else float(t)


class _EncodeOptions:
    __slots__ = ("alg", "expires_in", "headers", "now")

    def __init__(self, headers: object, expires_in: object, alg: object, now: object) -> None:
        self.headers = None if headers is None else _mapping_arg(headers, "headers")
        self.expires_in = None if expires_in is None else _seconds_arg(expires_in, "expires_in")
        if not isinstance(alg, str):
            raise TypeError(f"alg must be a str, not {type(alg).__name__}")
        if alg not in ALGS:
            raise ValueError(f'alg must be "EdDSA" or "Ed25519", not {alg!r}')
        self.alg = alg
        self.now = _now_arg(now)
        if self.expires_in is not None and not (
            math.isfinite(self.expires_in) and self.expires_in > 0.0
        ):
            raise ValueError(
                f"expires_in must be a finite number of seconds > 0, not {self.expires_in}"
            )
        if self.headers is not None:
            for name in RESERVED_HEADERS:
                if name in self.headers:
                    raise ValueError(
                        f"headers may not set {name!r}: the signer writes alg, typ and kid"
                    )


class _DecodeOptions:
    __slots__ = ("audience", "issuer", "leeway", "now", "require")

    def __init__(
        self, audience: object, issuer: object, leeway: object, require: object, now: object
    ) -> None:
        self.require = ["exp"] if require is None else (_names_arg(require, "require") or [])
        self.audience = _names_arg(audience, "audience")
        self.issuer = _names_arg(issuer, "issuer")
        self.leeway = _float_arg(leeway, "leeway")
        self.now = _now_arg(now)
        if not (math.isfinite(self.leeway) and self.leeway >= 0.0):
            raise ValueError(f"leeway must be a finite number of seconds >= 0, not {self.leeway}")
        if not math.isfinite(self.now):
            raise ValueError("now must be a finite timestamp")


# --- encode / decode ----------------------------------------------------------------------------


def _encode(key: _Key, claims: object, opts: _EncodeOptions) -> str:
    body = _mapping_arg(claims, "claims")
    private = key.private_key()
    if opts.expires_in is not None:
        body = dict(body)
        body["iat"] = _whole_seconds(opts.now)
        body["exp"] = _whole_seconds(opts.now + opts.expires_in)
    header: dict[str, Any] = {"alg": opts.alg, "typ": "JWT", "kid": key.kid}
    if opts.headers:
        header.update(opts.headers)
    signing_input = _b64e(_dumps(header)) + b"." + _b64e(_dumps(body))
    token = signing_input + b"." + _b64e(private.sign(signing_input))
    _count_issued()
    return token.decode("ascii")


def _number(claims: dict[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError(f"the {name} claim must be a number")
    return float(value)


def _validate_claims(claims: dict[str, Any], opts: _DecodeOptions) -> None:
    exp = _number(claims, "exp")
    nbf = _number(claims, "nbf")
    iat = _number(claims, "iat")
    for name in opts.require:
        if claims.get(name) is None:
            raise MissingRequiredClaimError(f"the token has no {json.dumps(name)} claim")
    now, leeway = opts.now, opts.leeway
    if iat is not None and iat > now + leeway:
        raise ImmatureSignatureError("the token is not yet valid (iat)")
    if nbf is not None and nbf > now + leeway:
        raise ImmatureSignatureError("the token is not yet valid (nbf)")
    if exp is not None and now >= exp + leeway:
        raise ExpiredSignatureError("the token has expired")
    if opts.issuer is not None:
        if "iss" not in claims:
            raise MissingRequiredClaimError('the token has no "iss" claim')
        iss = claims["iss"]
        if not (isinstance(iss, str) and iss in opts.issuer):
            raise InvalidIssuerError("invalid issuer")
    _check_audience(claims, opts.audience)


def _check_audience(claims: dict[str, Any], expected: list[str] | None) -> None:
    if expected is None:
        if "aud" in claims:
            raise InvalidAudienceError("the token has an audience but none was expected")
        return
    if "aud" not in claims:
        raise MissingRequiredClaimError('the token has no "aud" claim')
    aud = claims["aud"]
    if isinstance(aud, str):
        if aud in expected:
            return
        raise InvalidAudienceError("audience doesn't match")
    if isinstance(aud, list):
        found = False
        for item in aud:
            if not isinstance(item, str):
                raise InvalidAudienceError("the aud claim must be a string or a list of strings")
            found = found or item in expected
        if found:
            return
        raise InvalidAudienceError("audience doesn't match")
    raise InvalidAudienceError("the aud claim must be a string or a list of strings")


def _decode(
    token: object, key_for: Callable[[str | None], _Key], opts: _DecodeOptions
) -> dict[str, Any]:
    raw = _token_arg(token)
    try:
        claims = _decode_uncounted(raw, key_for, opts)
    except TokenError as exc:
        _count_rejected(exc)
        raise
    _count_verified()
    return claims


def _decode_uncounted(
    token: bytes, key_for: Callable[[str | None], _Key], opts: _DecodeOptions
) -> dict[str, Any]:
    # The same steps, in the same order, as core::tokens::decode.
    if len(token) > MAX_TOKEN_SIZE:
        raise DecodeError(f"the token is longer than {MAX_TOKEN_SIZE} bytes")
    parts = token.split(b".")
    if len(parts) != 3:
        raise DecodeError("a token has three base64url segments separated by '.'")
    h, p, s = parts
    header_bytes = _b64d(h, "header")
    payload_bytes = _b64d(p, "payload")
    signature = _b64d(s, "signature")
    header = _json_object(header_bytes, "header")
    if "alg" not in header:
        raise DecodeError("the header has no alg")
    alg = header["alg"]
    if not isinstance(alg, str):
        raise DecodeError("the header's alg is not a string")
    kid = header.get("kid")
    if "kid" in header and not isinstance(kid, str):
        raise DecodeError("the header's kid is not a string")
    if alg not in ALGS:
        raise InvalidSignatureError(
            f"the algorithm {json.dumps(alg, ensure_ascii=False)} is not allowed "
            "(EdDSA or Ed25519 only)"
        )
    if "crit" in header:
        raise InvalidSignatureError('the header has "crit": no extension is supported')
    if len(signature) != 64:
        raise InvalidSignatureError("the signature is not 64 bytes")
    key = key_for(kid)
    if not key.verify(token[: len(h) + 1 + len(p)], signature):
        raise InvalidSignatureError("signature verification failed")
    claims = _json_object(payload_bytes, "payload")
    _validate_claims(claims, opts)
    return claims


# --- keys ---------------------------------------------------------------------------------------


def _jwk_str(jwk: Mapping[str, Any], name: str) -> str | None:
    value = jwk.get(name)
    if value is None and name not in jwk:
        return None
    if not isinstance(value, str):
        raise ValueError(f"JWK member {name!r} must be a string")
    return value


def _jwk_b64(jwk: Mapping[str, Any], name: str) -> bytes | None:
    text = _jwk_str(jwk, name)
    if text is None:
        return None
    raw = _b64d_strict(text.encode("utf-8", "surrogatepass"))
    if raw is None:
        raise ValueError(f"JWK member {name!r} is not base64url without padding")
    return raw


def _thumbprint(public: bytes) -> str:
    # RFC 7638 through joserfc (RFC 8037 A.3 checks it in the tests).
    jwk: dict[str, str | list[str]] = {"kty": "OKP", "crv": "Ed25519", "x": _b64e(public).decode()}
    return str(OKPKey.import_key(jwk).thumbprint())


class _Key:
    """One Ed25519 key with its kid; the twin of ``core::tokens::Key``."""

    __slots__ = ("_private", "_public", "kid", "public_bytes")

    def __init__(
        self,
        private: Ed25519PrivateKey | None,
        public: Ed25519PublicKey,
        public_bytes: bytes,
        kid: str | None,
    ) -> None:
        self._private = private
        self._public = public
        self.public_bytes = public_bytes
        self.kid = kid if kid is not None else _thumbprint(public_bytes)

    def __repr__(self) -> str:
        return f"_Key(kid={self.kid!r}, private={self._private is not None})"

    def __reduce__(self) -> Any:
        raise TypeError("sark_native keys cannot be pickled (export them as PEM or JWK)")

    @classmethod
    def generate(cls, kid: str | None) -> _Key:
        return cls.from_private(Ed25519PrivateKey.generate(), kid)

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey, kid: str | None) -> _Key:
        public = private.public_key()
        raw = public.public_bytes_raw()
        _public_key_from_bytes(raw)
        return cls(private, public, raw, kid)

    @classmethod
    def from_private_pem(cls, pem: object, kid: str | None) -> _Key:
        if isinstance(pem, str):
            data = pem.encode("utf-8")
        else:
            data = _bytes_arg(pem, "pem")
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("a PEM is ASCII text") from None
        error = ValueError(
            'not an Ed25519 private key in PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----")'
        )
        if b"-----BEGIN PRIVATE KEY-----" not in data:
            raise error
        try:
            okp = OKPKey.import_key(data.strip())
        except (JoseError, UnsupportedAlgorithm, ValueError, TypeError):
            raise error from None
        private = okp.private_key
        if okp.curve_name != "Ed25519" or not isinstance(private, Ed25519PrivateKey):
            raise error
        return cls.from_private(private, kid)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any], kid: str | None, public_only: bool) -> _Key:
        kty = _jwk_str(jwk, "kty")
        if kty is None:
            raise ValueError('JWK has no "kty"')
        if kty != "OKP":
            raise ValueError(f'JWK kty must be "OKP", not {json.dumps(kty)}')
        crv = _jwk_str(jwk, "crv")
        if crv is None:
            raise ValueError('JWK has no "crv"')
        if crv != "Ed25519":
            raise ValueError(f'JWK crv must be "Ed25519", not {json.dumps(crv)}')
        alg = _jwk_str(jwk, "alg")
        if alg is not None and alg not in ALGS:
            raise ValueError(f"JWK alg must be EdDSA or Ed25519, not {json.dumps(alg)}")
        use = _jwk_str(jwk, "use")
        if use is not None and use != "sig":
            raise ValueError(f'JWK use must be "sig", not {json.dumps(use)}')
        if kid is None:
            kid = _jwk_str(jwk, "kid")
        x = _jwk_b64(jwk, "x")
        if x is None:
            raise ValueError('JWK has no "x"')
        public = _public_key_from_bytes(x)
        d = None if public_only else _jwk_b64(jwk, "d")
        if d is None:
            return cls(None, public, x, kid)
        if len(d) != 32:
            raise ValueError('JWK "d" must be 32 bytes')
        private = Ed25519PrivateKey.from_private_bytes(d)
        if private.public_key().public_bytes_raw() != x:
            raise ValueError('JWK "x" is not the public key of "d"')
        return cls(private, public, x, kid)

    def public_only(self) -> _Key:
        return _Key(None, self._public, self.public_bytes, self.kid)

    @property
    def has_private(self) -> bool:
        return self._private is not None

    def private_key(self) -> Ed25519PrivateKey:
        if self._private is None:
            raise TokenError(f"key {json.dumps(self.kid)} is public-only: it cannot sign")
        return self._private

    def okp(self, private: bool) -> OKPKey:
        okp: OKPKey = OKPKey.import_key(self.private_key() if private else self._public)
        return okp

    def public_jwk(self) -> dict[str, Any]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64e(self.public_bytes).decode(),
            "kid": self.kid,
            "use": "sig",
        }

    def verify(self, data: bytes, signature: bytes) -> bool:
        if len(signature) != 64 or _is_small_order(signature[:32]):
            return False
        try:
            self._public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def key_for(self, kid: str | None) -> _Key:
        if kid is not None and kid != self.kid:
            raise InvalidSignatureError(f"the token's kid {json.dumps(kid)} is not this key's")
        return self


class PyEd25519Signer:
    """An Ed25519 signing key with its ``kid``; see ``sark_native.Ed25519Signer``."""

    __slots__ = ("_key",)
    backend: Final = "python"

    def __init__(self, key: _Key) -> None:
        self._key = key

    @classmethod
    def generate(cls, kid: str | None = None) -> PyEd25519Signer:
        return cls(_Key.generate(_kid_arg(kid)))

    @classmethod
    def from_pem(cls, pem: str | bytes, kid: str | None = None) -> PyEd25519Signer:
        return cls(_Key.from_private_pem(pem, _kid_arg(kid)))

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any], kid: str | None = None) -> PyEd25519Signer:
        key = _Key.from_jwk(_mapping_arg(jwk, "jwk"), _kid_arg(kid), public_only=False)
        if not key.has_private:
            raise ValueError(
                'the JWK has no "d": a signer needs a private key (use KeySet.from_jwks to verify)'
            )
        return cls(key)

    @property
    def kid(self) -> str:
        return self._key.kid

    def thumbprint(self) -> str:
        return _thumbprint(self._key.public_bytes)

    def private_pem(self) -> bytes:
        return self._key.okp(private=True).as_pem(private=True)

    def public_pem(self) -> bytes:
        return self._key.okp(private=False).as_pem(private=False)

    def public_jwk(self) -> dict[str, Any]:
        return self._key.public_jwk()

    def private_jwk(self) -> dict[str, Any]:
        jwk = self._key.public_jwk()
        jwk["d"] = self._key.okp(private=True).as_dict(private=True)["d"]
        return jwk

    def sign(self, data: bytes | bytearray) -> bytes:
        return self._key.private_key().sign(_bytes_arg(data, "data"))

    def verify(self, data: bytes | bytearray, signature: bytes | bytearray) -> bool:
        return self._key.verify(_bytes_arg(data, "data"), _bytes_arg(signature, "signature"))

    def encode(
        self,
        claims: Mapping[str, Any],
        *,
        headers: Mapping[str, Any] | None = None,
        expires_in: float | datetime.timedelta | None = None,
        alg: str = "EdDSA",
        now: float | None = None,
    ) -> str:
        return _encode(self._key, claims, _EncodeOptions(headers, expires_in, alg, now))

    def decode(
        self,
        token: str | bytes,
        *,
        audience: str | Iterable[str] | None = None,
        issuer: str | Iterable[str] | None = None,
        leeway: float = 0.0,
        require: Iterable[str] | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        opts = _DecodeOptions(audience, issuer, leeway, require, now)
        return _decode(token, self._key.key_for, opts)

    def __repr__(self) -> str:
        return f"Ed25519Signer(kid={json.dumps(self.kid)}, backend='python')"

    def __reduce__(self) -> Any:
        raise TypeError("Ed25519Signer cannot be pickled (export it with private_pem())")


class PyKeySet:
    """Keys for verification with rotation; see ``sark_native.KeySet``."""

    __slots__ = ("_by_kid", "_keys")
    backend: Final = "python"

    def __init__(self, keys: list[_Key]) -> None:
        by_kid: dict[str, _Key] = {}
        for key in keys:
            if key.kid in by_kid:
                raise ValueError(f"two keys share the kid {json.dumps(key.kid)}")
            by_kid[key.kid] = key
        self._keys = keys
        self._by_kid = by_kid

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any] | str | bytes) -> PyKeySet:
        if isinstance(jwks, (str, bytes)):
            try:
                value: object = json.loads(jwks)
            except ValueError as exc:
                raise ValueError(f"the JWKS is not JSON: {exc}") from None
        else:
            value = _mapping_arg(jwks, "jwks")
        keys = value.get("keys") if isinstance(value, dict) else None
        if not isinstance(keys, list):
            raise ValueError('a JWKS is an object with a "keys" list')
        out = []
        for jwk in keys:
            if not isinstance(jwk, dict):
                raise ValueError("every JWKS key is an object")
            out.append(_Key.from_jwk(jwk, None, public_only=True))
        return cls(out)

    @classmethod
    def from_signers(cls, signers: Iterable[PyEd25519Signer]) -> PyKeySet:
        keys = []
        for signer in signers:
            if not isinstance(signer, PyEd25519Signer):
                raise TypeError(
                    f"from_signers takes Ed25519Signer objects, not {type(signer).__name__}"
                )
            keys.append(signer._key)
        return cls(keys)

    def to_jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self._keys]}

    @property
    def kids(self) -> list[str]:
        return [k.kid for k in self._keys]

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return isinstance(kid, str) and kid in self._by_kid

    def _key_for(self, kid: str | None) -> _Key:
        if kid is not None:
            key = self._by_kid.get(kid)
            if key is None:
                raise InvalidSignatureError(f"no key in the set has the kid {json.dumps(kid)}")
            return key
        if len(self._keys) == 1:
            return self._keys[0]
        raise InvalidSignatureError(
            f"the token has no kid and the set holds {len(self._keys)} keys"
        )

    def _signing_key(self, kid: str | None) -> _Key:
        if kid is not None:
            key = self._by_kid.get(kid)
            if key is None:
                raise TokenError(f"no key in the set has the kid {json.dumps(kid)}")
            if not key.has_private:
                raise TokenError(f"key {json.dumps(kid)} is public-only: it cannot sign")
            return key
        private = [k for k in self._keys if k.has_private]
        if not private:
            raise TokenError("the key set is public-only: it cannot sign")
        if len(private) > 1:
            raise TokenError("the key set holds several private keys: pass kid=")
        return private[0]

    def encode(
        self,
        claims: Mapping[str, Any],
        *,
        kid: str | None = None,
        headers: Mapping[str, Any] | None = None,
        expires_in: float | datetime.timedelta | None = None,
        alg: str = "EdDSA",
        now: float | None = None,
    ) -> str:
        key = self._signing_key(_kid_arg(kid))
        return _encode(key, claims, _EncodeOptions(headers, expires_in, alg, now))

    def decode(
        self,
        token: str | bytes,
        *,
        audience: str | Iterable[str] | None = None,
        issuer: str | Iterable[str] | None = None,
        leeway: float = 0.0,
        require: Iterable[str] | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        opts = _DecodeOptions(audience, issuer, leeway, require, now)
        return _decode(token, self._key_for, opts)

    def __repr__(self) -> str:
        return f"KeySet(kids={self.kids!r}, backend='python')"
