"""The contract of ``Ed25519Signer`` and ``KeySet`` (docs/tokens.md), checked on both backends.

Every behavioural test takes the ``backend`` fixture; ``test_tokens_parity.py`` checks that the
two backends write the same bytes, ``test_tokens_bad_input.py`` the battery of forged and
malformed tokens, ``test_tokens_interop.py`` joserfc, PyJWT and the RFC vectors.
"""

from __future__ import annotations

import datetime
import pickle
from collections import OrderedDict
from types import MappingProxyType
from typing import Any

import pytest

import sark_native
from sark_native import Ed25519Signer, KeySet
from sark_native._backend import Backend
from sark_native.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    TokenError,
)
from tokens_helpers import NOW, RFC8037_JWK, forge, parts

FUTURE = NOW + 3600


def test_generate_gives_a_fresh_key_with_a_thumbprint_kid(backend: Backend) -> None:
    a = Ed25519Signer.generate(backend=backend)
    b = Ed25519Signer.generate(backend=backend)
    assert isinstance(a, Ed25519Signer)
    assert a.backend == backend
    assert a.kid == a.thumbprint() != b.kid
    assert a.public_jwk()["x"] != b.public_jwk()["x"]
    assert Ed25519Signer.generate(kid="k1", backend=backend).kid == "k1"


def test_the_facade_cannot_be_instantiated_directly() -> None:
    with pytest.raises(TypeError, match="generate"):
        Ed25519Signer()
    with pytest.raises(TypeError, match="from_jwks"):
        KeySet()


def test_pem_round_trip(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    pem = s.private_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert s.public_pem().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    again = Ed25519Signer.from_pem(pem, backend=backend)
    assert again.kid == s.kid
    assert again.public_jwk() == s.public_jwk()
    assert Ed25519Signer.from_pem(pem.decode(), kid="x", backend=backend).kid == "x"
    assert again.sign(b"m") == s.sign(b"m")


def test_jwk_round_trip_and_members(backend: Backend) -> None:
    s = Ed25519Signer.from_jwk(RFC8037_JWK, backend=backend)
    public = s.public_jwk()
    assert public == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": RFC8037_JWK["x"],
        "kid": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
        "use": "sig",
    }
    private = s.private_jwk()
    assert private == {**public, "d": RFC8037_JWK["d"]}
    assert Ed25519Signer.from_jwk(private, backend=backend).kid == s.kid
    # The JWK's own kid is kept; kid= overrides it.
    assert Ed25519Signer.from_jwk({**private, "kid": "mine"}, backend=backend).kid == "mine"
    assert Ed25519Signer.from_jwk(private, kid="arg", backend=backend).kid == "arg"
    # Any mapping will do.
    assert Ed25519Signer.from_jwk(OrderedDict(private), backend=backend).kid == s.kid


def test_no_key_material_in_repr(backend: Backend) -> None:
    s = Ed25519Signer.from_jwk(RFC8037_JWK, backend=backend)
    text = repr(s) + str(s)
    assert s.kid in text
    assert RFC8037_JWK["d"] not in text
    assert "nWGx" not in text
    ks = KeySet.from_signers([s], backend=backend)
    assert RFC8037_JWK["d"] not in repr(ks)
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_sign_and_verify(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    sig = s.sign(b"data")
    assert len(sig) == 64
    assert s.sign(bytearray(b"data")) == sig  # deterministic (RFC 8032)
    assert s.verify(b"data", sig) is True
    assert s.verify(b"datA", sig) is False
    assert s.verify(b"data", sig[:63]) is False
    assert s.verify(b"data", sig + b"\0") is False
    assert s.verify(b"data", b"") is False
    with pytest.raises(TypeError):
        s.sign("data")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.verify("data", sig)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.verify(b"data", None)  # type: ignore[arg-type]


def test_encode_decode_round_trip(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    claims = {"sub": "alice", "roles": ["admin", "ops"], "n": 1.5, "ok": True, "z": None}
    token = s.encode({**claims, "exp": FUTURE}, now=NOW)
    header = parts(token)[0]
    assert list(header) == ["alg", "typ", "kid"]
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": s.kid}
    assert s.decode(token, now=NOW) == {**claims, "exp": FUTURE}
    assert s.decode(token.encode(), now=NOW)["sub"] == "alice"


def test_encode_with_expires_in_sets_iat_and_exp(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    token = s.encode({"sub": "a"}, expires_in=60, now=NOW + 0.75)
    assert parts(token)[1] == {"sub": "a", "iat": int(NOW), "exp": int(NOW) + 60}
    assert s.decode(token, now=NOW + 59)["sub"] == "a"
    with pytest.raises(ExpiredSignatureError):
        s.decode(token, now=NOW + 60)
    token = s.encode({"sub": "a"}, expires_in=datetime.timedelta(minutes=1), now=NOW)
    assert parts(token)[1]["exp"] == int(NOW) + 60
    # Without now=, the clock.
    fresh = s.encode({"sub": "a"}, expires_in=60)
    assert s.decode(fresh)["sub"] == "a"


def test_encode_headers_and_alg(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    token = s.encode({"exp": FUTURE}, headers={"cty": "x", "x-n": 1}, alg="Ed25519")
    assert parts(token)[0] == {"alg": "Ed25519", "typ": "JWT", "kid": s.kid, "cty": "x", "x-n": 1}
    assert s.decode(token, now=NOW) == {"exp": FUTURE}
    for name in ("alg", "typ", "kid"):
        with pytest.raises(ValueError, match=name):
            s.encode({}, headers={name: "x"})
    for alg in ("HS256", "none", "RS256", "eddsa"):
        with pytest.raises(ValueError, match="alg"):
            s.encode({}, alg=alg)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="expires_in"):
            s.encode({}, expires_in=bad)


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"n": float("nan")}, ValueError),
        ({"n": float("inf")}, ValueError),
        ({"n": 2**63}, ValueError),
        ({"n": -(2**63) - 1}, ValueError),
        ({1: "int key"}, TypeError),
        ({"s": {1, 2}}, TypeError),
        ({"b": b"bytes"}, TypeError),
        ({"s": "lone \ud800 surrogate"}, ValueError),
    ],
)
def test_encode_refuses_what_json_cannot_say(
    backend: Backend, claims: dict[Any, Any], error: type[Exception]
) -> None:
    s = Ed25519Signer.generate(backend=backend)
    with pytest.raises(error):
        s.encode(claims)


def test_claims_and_headers_may_be_any_mapping(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    claims = MappingProxyType({"sub": "a", "exp": FUTURE})
    token = s.encode(claims, headers=MappingProxyType({"cty": "x"}))
    assert parts(token) == ({"alg": "EdDSA", "typ": "JWT", "kid": s.kid, "cty": "x"}, dict(claims))
    # A mapping nested inside the claims is not JSON (as for json.dumps).
    with pytest.raises(TypeError):
        s.encode({"m": MappingProxyType({"a": 1})})


def test_encode_refuses_deep_nesting_the_same_way(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    ok: Any = 1
    for _ in range(63):
        ok = [ok]
    s.encode({"deep": ok})
    with pytest.raises(ValueError, match="nested"):
        s.encode({"deep": [ok]})
    with pytest.raises(TypeError):
        s.encode(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_exp_nbf_iat_with_leeway(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    expired = s.encode({"exp": NOW})
    with pytest.raises(ExpiredSignatureError):
        s.decode(expired, now=NOW)
    assert s.decode(expired, now=NOW - 0.5)["exp"] == NOW
    assert s.decode(expired, now=NOW, leeway=1) == {"exp": NOW}
    early = s.encode({"exp": FUTURE, "nbf": NOW + 10})
    with pytest.raises(ImmatureSignatureError):
        s.decode(early, now=NOW)
    assert s.decode(early, now=NOW, leeway=10.0)["nbf"] == NOW + 10
    assert s.decode(early, now=NOW + 10)["nbf"] == NOW + 10
    future_iat = s.encode({"exp": FUTURE, "iat": NOW + 5})
    with pytest.raises(ImmatureSignatureError):
        s.decode(future_iat, now=NOW)
    assert s.decode(future_iat, now=NOW, leeway=5)["iat"] == NOW + 5
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="leeway"):
            s.decode(expired, leeway=bad)


def test_required_claims(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    token = s.encode({"sub": "a"})
    with pytest.raises(MissingRequiredClaimError, match="exp"):
        s.decode(token, now=NOW)
    assert s.decode(token, require=(), now=NOW) == {"sub": "a"}
    assert s.decode(token, require=["sub"], now=NOW) == {"sub": "a"}
    with pytest.raises(MissingRequiredClaimError, match="jti"):
        s.decode(token, require=("sub", "jti"), now=NOW)
    nulled = s.encode({"sub": None})
    with pytest.raises(MissingRequiredClaimError):
        s.decode(nulled, require=["sub"], now=NOW)


def test_audience(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    one = s.encode({"exp": FUTURE, "aud": "api"})
    many = s.encode({"exp": FUTURE, "aud": ["web", "api"]})
    none = s.encode({"exp": FUTURE})
    assert s.decode(one, audience="api", now=NOW)["aud"] == "api"
    assert s.decode(one, audience=["x", "api"], now=NOW)["aud"] == "api"
    assert s.decode(many, audience="api", now=NOW)["aud"] == ["web", "api"]
    assert s.decode(many, audience={"web"}, now=NOW)["aud"] == ["web", "api"]
    with pytest.raises(InvalidAudienceError):
        s.decode(one, now=NOW)  # a token with aud when none is expected
    with pytest.raises(InvalidAudienceError):
        s.decode(one, audience="other", now=NOW)
    with pytest.raises(InvalidAudienceError):
        s.decode(many, audience=["x", "y"], now=NOW)
    with pytest.raises(MissingRequiredClaimError, match="aud"):
        s.decode(none, audience="api", now=NOW)
    bad_type = s.encode({"exp": FUTURE, "aud": ["api", 3]})
    with pytest.raises(InvalidAudienceError):
        s.decode(bad_type, audience="api", now=NOW)
    with pytest.raises(TypeError):
        s.decode(one, audience=[1], now=NOW)  # type: ignore[list-item]


def test_issuer(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    token = s.encode({"exp": FUTURE, "iss": "https://auth"})
    assert s.decode(token, issuer="https://auth", now=NOW)["iss"] == "https://auth"
    assert s.decode(token, issuer=["x", "https://auth"], now=NOW)["iss"] == "https://auth"
    assert s.decode(token, now=NOW)["iss"] == "https://auth"  # not checked without issuer=
    with pytest.raises(InvalidIssuerError):
        s.decode(token, issuer="https://other", now=NOW)
    with pytest.raises(MissingRequiredClaimError, match="iss"):
        s.decode(s.encode({"exp": FUTURE}), issuer="https://auth", now=NOW)
    with pytest.raises(InvalidIssuerError):
        s.decode(s.encode({"exp": FUTURE, "iss": 1}), issuer="1", now=NOW)


def test_claim_check_order_is_pyjwt_s(backend: Backend) -> None:
    """Required first, then iat, nbf, exp, iss, aud: the first failure wins."""
    s = Ed25519Signer.generate(backend=backend)
    token = s.encode({"exp": NOW - 1, "nbf": NOW + 10, "iss": "x", "aud": "y"})
    with pytest.raises(MissingRequiredClaimError):
        s.decode(token, require=["jti"], now=NOW)
    with pytest.raises(ImmatureSignatureError):
        s.decode(token, now=NOW)
    with pytest.raises(ExpiredSignatureError):
        s.decode(token, now=NOW + 20)


def test_key_set_chooses_by_kid(backend: Backend) -> None:
    a = Ed25519Signer.generate(kid="a", backend=backend)
    b = Ed25519Signer.generate(kid="b", backend=backend)
    jwks = {"keys": [a.public_jwk(), b.public_jwk()]}
    ks = KeySet.from_jwks(jwks, backend=backend)
    assert isinstance(ks, KeySet)
    assert ks.backend == backend
    assert ks.kids == ["a", "b"]
    assert len(ks) == 2
    assert "a" in ks
    assert "c" not in ks
    assert 1 not in ks
    ta = a.encode({"exp": FUTURE, "who": "a"})
    tb = b.encode({"exp": FUTURE, "who": "b"})
    assert ks.decode(ta, now=NOW)["who"] == "a"
    assert ks.decode(tb, now=NOW)["who"] == "b"
    c = Ed25519Signer.generate(kid="c", backend=backend)
    with pytest.raises(InvalidSignatureError, match="kid"):
        ks.decode(c.encode({"exp": FUTURE}), now=NOW)
    # A token signed by b but naming a: the signature fails.
    forged = b.encode({"exp": FUTURE})
    forged = forged.replace(forged.split(".")[0], a.encode({}).split(".")[0])
    with pytest.raises(InvalidSignatureError):
        ks.decode(forged, now=NOW)
    # JSON text works too.
    import json

    assert KeySet.from_jwks(json.dumps(jwks), backend=backend).kids == ["a", "b"]


def test_key_set_without_kid(backend: Backend) -> None:
    a = Ed25519Signer.generate(kid="a", backend=backend)
    b = Ed25519Signer.generate(kid="b", backend=backend)
    no_kid = forge(a, {"alg": "EdDSA"}, {"exp": FUTURE})
    one = KeySet.from_jwks({"keys": [a.public_jwk()]}, backend=backend)
    assert one.decode(no_kid, now=NOW) == {"exp": FUTURE}
    two = KeySet.from_jwks({"keys": [a.public_jwk(), b.public_jwk()]}, backend=backend)
    with pytest.raises(InvalidSignatureError, match="no kid"):
        two.decode(no_kid, now=NOW)


def test_public_key_set_cannot_sign_and_to_jwks_is_public(backend: Backend) -> None:
    a = Ed25519Signer.generate(kid="a", backend=backend)
    b = Ed25519Signer.generate(kid="b", backend=backend)
    public = KeySet.from_jwks({"keys": [a.private_jwk()]}, backend=backend)
    assert "d" not in public.to_jwks()["keys"][0]
    with pytest.raises(TokenError, match="public-only"):
        public.encode({"exp": FUTURE})
    with pytest.raises(TokenError, match="public-only"):
        public.encode({"exp": FUTURE}, kid="a")
    signing = KeySet.from_signers([a, b], backend=backend)
    assert all("d" not in jwk for jwk in signing.to_jwks()["keys"])
    assert signing.to_jwks() == {"keys": [a.public_jwk(), b.public_jwk()]}
    token = signing.encode({"exp": FUTURE}, kid="b")
    assert parts(token)[0]["kid"] == "b"
    assert public.decode(signing.encode({"exp": FUTURE}, kid="a"), now=NOW) == {"exp": FUTURE}
    with pytest.raises(TokenError, match="several"):
        signing.encode({"exp": FUTURE})
    with pytest.raises(TokenError, match="kid"):
        signing.encode({"exp": FUTURE}, kid="zz")
    only = KeySet.from_signers([a], backend=backend)
    assert parts(only.encode({}))[0]["kid"] == "a"


def test_key_set_round_trips_through_jwks(backend: Backend) -> None:
    signers = [Ed25519Signer.generate(backend=backend) for _ in range(3)]
    ks = KeySet.from_signers(signers, backend=backend)
    again = KeySet.from_jwks(ks.to_jwks(), backend=backend)
    assert again.kids == [s.kid for s in signers]
    for s in signers:
        assert again.decode(s.encode({"exp": FUTURE}), now=NOW) == {"exp": FUTURE}


def test_key_set_refuses_bad_jwks(backend: Backend) -> None:
    a = Ed25519Signer.generate(kid="a", backend=backend)
    bad: object
    for bad in (
        {},
        {"keys": {}},
        {"keys": ["x"]},
        {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]},
        {"keys": [a.public_jwk(), a.public_jwk()]},  # duplicate kid
        "not json",
    ):
        with pytest.raises(ValueError, match=r"JWKS|JWK|kid|RSA|kty"):
            KeySet.from_jwks(bad, backend=backend)
    with pytest.raises(ValueError, match="kid"):
        KeySet.from_signers([a, a], backend=backend)


def test_key_set_takes_signers_of_either_backend() -> None:
    # Both backends in the normal run; the Python one alone with SARK_NATIVE_BACKEND=python.
    backends: list[Backend] = ["rust", "python"] if sark_native.RUST_AVAILABLE else ["python"]
    r = Ed25519Signer.generate(kid="r", backend=backends[0])
    p = Ed25519Signer.generate(kid="p", backend="python")
    for backend in backends:
        ks = KeySet.from_signers([r, p], backend=backend)
        assert ks.backend == backend
        assert ks.kids == ["r", "p"]
        assert ks.decode(p.encode({"exp": FUTURE}), now=NOW) == {"exp": FUTURE}
        assert r.decode(ks.encode({"exp": FUTURE}, kid="r"), now=NOW) == {"exp": FUTURE}


def test_signer_decode_refuses_another_kid(backend: Backend) -> None:
    a = Ed25519Signer.generate(kid="a", backend=backend)
    same_key = Ed25519Signer.from_pem(a.private_pem(), kid="other", backend=backend)
    with pytest.raises(InvalidSignatureError, match="kid"):
        a.decode(same_key.encode({"exp": FUTURE}), now=NOW)


def test_decoded_claims_keep_order_and_types(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    claims = {"z": 1, "a": 2.0, "m": {"y": [1, "2", None]}, "u": "é✓", "big": 2**63 - 1}
    out = s.decode(s.encode({**claims, "exp": FUTURE}), now=NOW)
    assert list(out) == [*claims, "exp"]
    assert out == {**claims, "exp": FUTURE}
    assert isinstance(out["a"], float)
    assert isinstance(out["z"], int)


def test_backend_choice(backend: Backend) -> None:
    with pytest.raises(ValueError, match="backend"):
        Ed25519Signer.generate(backend="go")  # type: ignore[arg-type]
    assert "tokens" in sark_native.backend_info()["components"]


def test_json_corner_cases_decode_alike(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    header = {"alg": "EdDSA", "kid": s.kid}
    dup = s.decode(forge(s, header, b'{"exp":4000000000,"a":1,"b":2,"a":3}'), now=NOW)
    assert list(dup.items()) == [("exp", 4000000000), ("a", 3), ("b", 2)]
    big = s.decode(forge(s, header, b'{"exp":4000000000,"u":18446744073709551615,"f":1e19}'))
    assert big["u"] == 2**64 - 1
    assert isinstance(big["u"], int)
    huge = s.decode(forge(s, header, b'{"exp":4000000000,"h":18446744073709551616,"n":-1e0}'))
    assert huge["h"] == float(2**64)
    assert isinstance(huge["h"], float)
    assert huge["n"] == -1.0
