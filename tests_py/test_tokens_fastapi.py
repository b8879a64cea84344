"""The FastAPI dependency ``sark_native.fastapi.bearer_claims``: claims for a good Bearer token,
401 with ``WWW-Authenticate`` otherwise, on both backends."""

# No `from __future__ import annotations`: FastAPI must see the route's Annotated[..., Depends(x)]
# with `x` a local of make_app, which a string annotation could not resolve.

import time
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI

from sark_native import Ed25519Signer, KeySet
from sark_native._backend import Backend
from sark_native.fastapi import bearer_claims

try:  # the ASGI client: httpx2 on Python 3.11+, httpx on 3.10 (see constraints.txt)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - Python 3.10
    import httpx  # type: ignore[no-redef,import-not-found,unused-ignore]


def make_app(verifier: Any, **kwargs: Any) -> httpx.AsyncClient:
    """An in-process client of an app with one protected route (no network: ASGI transport)."""
    app = FastAPI()
    current = bearer_claims(verifier, **kwargs)

    @app.get("/me")
    async def me(claims: Annotated[dict[str, Any], Depends(current)]) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
def signer(backend: Backend) -> Ed25519Signer:
    return Ed25519Signer.generate(kid="k", backend=backend)


@pytest.mark.asyncio
async def test_good_token_gives_claims(backend: Backend, signer: Ed25519Signer) -> None:
    keys = KeySet.from_jwks({"keys": [signer.public_jwk()]}, backend=backend)
    token = signer.encode({"sub": "alice", "aud": "api", "iss": "me"}, expires_in=60)
    async with make_app(keys, audience="api", issuer="me") as client:
        r = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        assert r.json() == {"sub": "alice"}
        r = await client.get("/me", headers={"Authorization": f"bearer   {token}"})
        assert r.status_code == 200


@pytest.mark.asyncio
async def test_missing_token_is_401_with_a_bare_challenge(signer: Ed25519Signer) -> None:
    async with make_app(signer, realm="gw") as client:
        r = await client.get("/me")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="gw"'
    async with make_app(signer) as client:
        assert (await client.get("/me")).headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token abc"])
@pytest.mark.asyncio
async def test_other_schemes_are_invalid_requests(signer: Ed25519Signer, header: str) -> None:
    async with make_app(signer) as client:
        r = await client.get("/me", headers={"Authorization": header})
        assert r.status_code == 401
        assert 'error="invalid_request"' in r.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("claims", "description"),
    [
        ({"sub": "a", "exp": 1}, "The token has expired"),
        ({"sub": "a", "exp": 4_000_000_000, "nbf": 4_000_000_000}, "The token is not yet valid"),
        ({"sub": "a", "exp": 4_000_000_000, "aud": "other"}, "The token is not for this audience"),
        ({"sub": "a"}, "The token lacks a required claim"),
    ],
)
@pytest.mark.asyncio
async def test_bad_tokens_are_invalid_token(
    signer: Ed25519Signer, claims: dict[str, Any], description: str
) -> None:
    token = signer.encode(claims)
    async with make_app(signer) as client:
        r = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
        challenge = r.headers["www-authenticate"]
        assert challenge == (f'Bearer error="invalid_token", error_description="{description}"')
        assert token not in r.text


@pytest.mark.asyncio
async def test_forged_and_malformed_tokens_are_401(backend: Backend, signer: Ed25519Signer) -> None:
    other = Ed25519Signer.generate(kid="k", backend=backend)
    forged = other.encode({"sub": "root", "exp": int(time.time()) + 60})
    async with make_app(signer) as client:
        for token, description in [
            (forged, "The token signature is invalid"),
            ("a.b.c", "The token is malformed"),
            ("x" * 20_000, "The token is malformed"),
        ]:
            r = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401
            assert f'error_description="{description}"' in r.headers["www-authenticate"]
