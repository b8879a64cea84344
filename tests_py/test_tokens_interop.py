"""Interoperability: the RFC 8032 and RFC 8037 vectors, tokens exchanged in both directions with
joserfc and PyJWT, PEM/JWK exchanged with ``cryptography``, and byte-identical tokens from the
two backends (the serialization of docs/tokens.md)."""

from __future__ import annotations

import json
import math
import random
import struct
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from joserfc import jwt as jose_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet as JoseKeySet
from joserfc.jwk import OKPKey

import sark_native
from sark_native import Ed25519Signer, KeySet
from sark_native._backend import Backend
from tokens_helpers import NOW, RFC8037_JWK, b64d, b64e

FUTURE = int(NOW) + 3600

#: RFC 8032 section 7.1, tests 1-3: (secret, public, message, signature), hex.
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39"
        "701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f36"
        "13d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f7"
        "60984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@contextmanager
def quiet_joserfc() -> Iterator[None]:
    """joserfc warns that ``EdDSA`` is deprecated (RFC 9864); the peer's own calls only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        yield


def _signer_from_seed(seed_hex: str, backend: Backend) -> Ed25519Signer:
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "d": b64e(bytes.fromhex(seed_hex)),
        "x": b64e(
            ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
            .public_key()
            .public_bytes_raw()
        ),
    }
    return Ed25519Signer.from_jwk(jwk, backend=backend)


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors(
    backend: Backend, secret: str, public: str, message: str, signature: str
) -> None:
    s = _signer_from_seed(secret, backend)
    assert b64d(s.public_jwk()["x"]).hex() == public
    assert s.sign(bytes.fromhex(message)).hex() == signature
    assert s.verify(bytes.fromhex(message), bytes.fromhex(signature)) is True
    assert s.verify(bytes.fromhex(message) + b"x", bytes.fromhex(signature)) is False


def test_rfc8037_examples(backend: Backend) -> None:
    s = Ed25519Signer.from_jwk(RFC8037_JWK, backend=backend)
    # A.3: the RFC 7638 thumbprint, which is also the default kid.
    assert s.thumbprint() == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert s.kid == s.thumbprint()
    # A.4: the JWS over "Example of Ed25519 signing" with header {"alg":"EdDSA"}.
    signing_input = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    signature = (
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    )
    assert b64e(s.sign(signing_input)) == signature
    assert s.verify(signing_input, b64d(signature))
    # A.5: the same key verifies it from its public JWK alone.
    public = KeySet.from_jwks({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": RFC8037_JWK["x"]}]})
    assert public.kids == [s.kid]


def test_pem_interoperates_with_cryptography(backend: Backend) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    s = Ed25519Signer.from_pem(pem, backend=backend)
    assert s.private_pem() == pem  # the same PKCS#8 v1 document, byte for byte
    assert s.public_pem() == key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.public_key().verify(s.sign(b"m"), b"m") is None
    loaded = serialization.load_pem_private_key(s.private_pem(), password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    # OpenSSL 3 also writes PKCS#8 v2 (with the public key); the Rust path reads it.
    okp = OKPKey.import_key(pem)
    assert OKPKey.import_key(s.public_pem()).thumbprint() == okp.thumbprint() == s.thumbprint()


def test_tokens_verify_with_pyjwt(backend: Backend) -> None:
    s = Ed25519Signer.generate(backend=backend)
    # PyJWT checks exp against the real clock.
    claims = {"sub": "alice", "aud": "api", "iss": "me", "exp": int(time.time()) + 3600, "n": [1]}
    for alg in ("EdDSA",):  # PyJWT only knows the RFC 8037 name
        token = s.encode(claims, alg=alg)
        out = pyjwt.decode(
            token,
            s.public_pem(),
            algorithms=["EdDSA"],
            audience="api",
            issuer="me",
        )
        assert out == claims
        assert pyjwt.get_unverified_header(token) == {"alg": alg, "typ": "JWT", "kid": s.kid}
    # Through PyJWT's own JWK support, from our public JWK.
    jwk = pyjwt.PyJWK(s.public_jwk())
    assert pyjwt.decode(s.encode(claims), jwk, algorithms=["EdDSA"], audience="api") == claims


def test_pyjwt_tokens_verify_here(backend: Backend) -> None:
    s = Ed25519Signer.generate(kid="k1", backend=backend)
    claims = {"sub": "bob", "exp": FUTURE, "nbf": int(NOW) - 1, "aud": ["a", "b"]}
    token = pyjwt.encode(claims, s.private_pem(), algorithm="EdDSA", headers={"kid": "k1"})
    assert s.decode(token, audience="b", now=NOW) == claims
    ks = KeySet.from_jwks({"keys": [s.public_jwk()]}, backend=backend)
    assert ks.decode(token, audience="a", now=NOW) == claims
    # PyJWT without a kid: fine for a one-key set.
    plain = pyjwt.encode({"exp": FUTURE}, s.private_pem(), algorithm="EdDSA")
    assert ks.decode(plain, now=NOW) == {"exp": FUTURE}


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_tokens_verify_with_joserfc(backend: Backend, alg: str) -> None:
    s = Ed25519Signer.generate(backend=backend)
    claims = {"sub": "carol", "exp": FUTURE, "u": "é✓"}
    token = s.encode(claims, alg=alg)
    key = OKPKey.import_key(s.public_jwk())
    with quiet_joserfc():
        out = jose_jwt.decode(token, key, algorithms=[alg])
    assert out.claims == claims
    assert out.header == {"alg": alg, "typ": "JWT", "kid": s.kid}
    # Through a joserfc key set built from our JWKS.
    jwks = JoseKeySet.import_key_set(cast(Any, KeySet.from_signers([s], backend=backend).to_jwks()))
    with quiet_joserfc():
        assert jose_jwt.decode(token, jwks, algorithms=[alg]).claims == claims


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_joserfc_tokens_verify_here(backend: Backend, alg: str) -> None:
    s = Ed25519Signer.generate(kid="k2", backend=backend)
    key = OKPKey.import_key(s.private_jwk())
    claims = {"sub": "dave", "exp": FUTURE, "iss": "https://auth"}
    with quiet_joserfc():
        token = jose_jwt.encode({"alg": alg, "kid": "k2"}, claims, key, algorithms=[alg])
    assert s.decode(token, issuer="https://auth", now=NOW) == claims
    ks = KeySet.from_jwks({"keys": [s.public_jwk()]}, backend=backend)
    assert ks.decode(token, now=NOW) == claims


def test_the_python_path_does_not_warn(backend: Backend) -> None:
    # pytest turns warnings into errors; record them anyway to say what this test is about.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = Ed25519Signer.generate(backend=backend)
        s2 = Ed25519Signer.from_pem(s.private_pem(), backend=backend)
        s3 = Ed25519Signer.from_jwk(s.private_jwk(), backend=backend)
        for alg in ("EdDSA", "Ed25519"):
            token = s.encode({"exp": FUTURE}, alg=alg)
            s2.decode(token, now=NOW)
            s3.decode(token, now=NOW)
            KeySet.from_jwks(KeySet.from_signers([s], backend=backend).to_jwks()).decode(
                token, now=NOW
            )
        s.public_pem()
        s.thumbprint()
    assert [str(w.message) for w in caught] == []


# --- byte-identical tokens ------------------------------------------------------------------------

#: The token for RFC8037_JWK and these claims; both backends must write exactly this.
GOLDEN_CLAIMS: dict[str, Any] = {
    "sub": 'é\u0001"\\/\u2028',
    "n": 1.5e-07,
    "big": 1e16,
    "small": 0.0001,
    "neg": -0.0,
    "i": -(2**63),
    "list": [True, None, {"z": 1, "a": [0.1, 1e22]}],
    "emoji": "🔑",
}
GOLDEN_HEADERS = {"x5t#S256": "abc", "n": 1}
GOLDEN_PAYLOAD = (
    '{"sub":"é\\u0001\\"\\\\/\u2028","n":1.5e-07,"big":1e+16,"small":0.0001,"neg":-0.0,'
    '"i":-9223372036854775808,"list":[true,null,{"z":1,"a":[0.1,1e+22]}],"emoji":"🔑",'
    '"iat":1700000000,"exp":1700000060}'
)


def test_golden_serialization(backend: Backend) -> None:
    s = Ed25519Signer.from_jwk(RFC8037_JWK, backend=backend)
    token = s.encode(GOLDEN_CLAIMS, headers=GOLDEN_HEADERS, expires_in=60, now=NOW + 0.5)
    h, p, sig = token.split(".")
    assert b64d(h).decode() == (
        '{"alg":"EdDSA","typ":"JWT","kid":"kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",'
        '"x5t#S256":"abc","n":1}'
    )
    assert b64d(p).decode() == GOLDEN_PAYLOAD
    # The payload is exactly what Python's json module writes for it (the reference).
    expected = dict(GOLDEN_CLAIMS, iat=1700000000, exp=1700000060)
    assert json.dumps(expected, separators=(",", ":"), ensure_ascii=False) == GOLDEN_PAYLOAD
    assert s.verify(f"{h}.{p}".encode(), b64d(sig))
    assert s.decode(token, now=NOW)["sub"] == GOLDEN_CLAIMS["sub"]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(2**63), 2**63 - 1)
    if kind == 2:
        return rng.randint(-1000, 1000)
    if kind == 3:
        # Floats across every exponent, so both repr forms and their limits appear.
        return rng.choice([-1, 1]) * rng.random() * 10.0 ** rng.randint(-30, 30)
    if kind == 4:
        return rng.choice([0.0, -0.0, 1e16, 1e15, 1e-4, 1e-5, 5e-324, 1.7976931348623157e308])
    if kind == 5:
        alphabet = 'abcXYZ "\\/\n\t\u0000\u001f\u007f\u00e9\u2028\u2029\ud7ff\ue000\U0001f511'
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 7:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3)))
    return {f"k{rng.randint(0, 99)}\u00e9": _random_value(rng, depth + 1) for _ in range(4)}


def test_backends_write_byte_identical_tokens(backend: Backend) -> None:
    """Each backend against the pure-Python reference (in the normal run: Rust vs Python)."""
    rng = random.Random(20241125)
    reference = Ed25519Signer.generate(backend="python")
    s = Ed25519Signer.from_pem(reference.private_pem(), backend=backend)
    assert s.kid == reference.kid
    for _ in range(300):
        claims = {f"c{i}": _random_value(rng) for i in range(rng.randint(0, 6))}
        headers = {"h": _random_value(rng)} if rng.random() < 0.3 else None
        alg = rng.choice(["EdDSA", "Ed25519"])
        expires = rng.choice([None, 1, 59.9, 3600])
        now = NOW + rng.random()
        kwargs: dict[str, Any] = {"headers": headers, "alg": alg, "expires_in": expires, "now": now}
        ours = s.encode(claims, **kwargs)
        assert ours == reference.encode(claims, **kwargs), claims
        # And what decodes is what went in (tuples come back as lists).
        decoded = reference.decode(ours, require=(), now=now)
        assert json.dumps(decoded) == json.dumps(
            {**claims, **({"iat": int(now), "exp": int(now + expires)} if expires else {})}
        )
        assert s.decode(ours, require=(), now=now) == decoded


def test_both_backends_decode_each_others_tokens() -> None:
    backends: list[Backend] = ["rust", "python"] if sark_native.RUST_AVAILABLE else ["python"]
    signers = [Ed25519Signer.generate(kid=b, backend=b) for b in backends]
    jwks = {"keys": [s.public_jwk() for s in signers]}
    for b in backends:
        ks = KeySet.from_jwks(jwks, backend=b)
        for s in signers:
            assert ks.decode(s.encode({"exp": FUTURE, "by": s.kid}), now=NOW)["by"] == s.kid


def test_floats_are_written_as_python_writes_them(backend: Backend) -> None:
    """Random doubles over the whole range, ties included: the payload is ``json.dumps``'s."""
    rng = random.Random(7)
    s = Ed25519Signer.from_jwk(RFC8037_JWK, backend=backend)
    for _ in range(10):
        floats: list[float] = []
        while len(floats) < 1000:
            x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
            if math.isfinite(x):
                floats.append(x)
        # Halfway cases: k + 0.5 ulp-ish decimals and short binary fractions.
        floats += [
            rng.randint(0, 2**40) + rng.choice([0.125, 0.375, 0.625, 0.875]) for _ in range(200)
        ]
        token = s.encode({"f": floats})
        payload = b64d(token.split(".")[1]).decode()
        assert payload == json.dumps({"f": floats}, separators=(",", ":"))
