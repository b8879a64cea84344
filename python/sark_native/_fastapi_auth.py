"""FastAPI glue: a Bearer-token dependency (exported by ``sark_native.fastapi``).

Needs FastAPI (the ``fastapi`` extra). Import it as ``sark_native.fastapi``::

    from fastapi import Depends, FastAPI
    from sark_native import KeySet
    from sark_native.fastapi import bearer_claims

    keys = KeySet.from_jwks(jwks)
    current_claims = bearer_claims(keys, audience="api", issuer="https://auth.example")

    @app.get("/me")
    async def me(claims: dict = Depends(current_claims)) -> dict:
        return {"sub": claims["sub"]}

A request without a Bearer token, or with one that fails ``decode``, gets 401 with a
``WWW-Authenticate: Bearer ...`` header (RFC 6750 section 3); the body says what failed in general
terms, never the token or a key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import HTTPException, Request, status

from .exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    TokenError,
)

if TYPE_CHECKING:
    from .tokens import Ed25519Signer, KeySet

__all__ = ["TokenVerifier", "bearer_claims"]


class TokenVerifier(Protocol):
    """What ``bearer_claims`` needs: an ``Ed25519Signer`` or a ``KeySet`` (either backend)."""

    def decode(
        self,
        token: str | bytes,
        *,
        audience: str | Iterable[str] | None = None,
        issuer: str | Iterable[str] | None = None,
        leeway: float = 0.0,
        require: Iterable[str] | None = None,
        now: float | None = None,
    ) -> dict[str, Any]: ...


#: The ``error_description`` sent for each failure (general terms: nothing from the token).
_DESCRIPTIONS: dict[type[TokenError], str] = {
    ExpiredSignatureError: "The token has expired",
    ImmatureSignatureError: "The token is not yet valid",
    InvalidAudienceError: "The token is not for this audience",
    InvalidIssuerError: "The token is from an unexpected issuer",
    MissingRequiredClaimError: "The token lacks a required claim",
    InvalidSignatureError: "The token signature is invalid",
}


def _challenge(realm: str | None, error: str | None = None, description: str | None = None) -> str:
    params = []
    if realm is not None:
        params.append(f'realm="{realm}"')
    if error is not None:
        params.append(f'error="{error}"')
    if description is not None:
        params.append(f'error_description="{description}"')
    return "Bearer" + (" " + ", ".join(params) if params else "")


def bearer_claims(
    verifier: Ed25519Signer | KeySet | TokenVerifier,
    *,
    audience: str | Iterable[str] | None = None,
    issuer: str | Iterable[str] | None = None,
    leeway: float = 0.0,
    require: Iterable[str] = ("exp",),
    realm: str | None = None,
) -> Callable[[Request], Awaitable[dict[str, Any]]]:
    """A FastAPI dependency returning the verified claims of the request's Bearer token.

    ``verifier`` is an :class:`~sark_native.Ed25519Signer` or a :class:`~sark_native.KeySet`;
    ``audience``, ``issuer``, ``leeway`` and ``require`` are passed to its ``decode``. Failures
    answer 401 with ``WWW-Authenticate``: without a token, ``Bearer`` (plus ``realm``); with a
    bad one, ``Bearer error="invalid_token", error_description="..."``; with another scheme or
    an empty token, ``error="invalid_request"``.
    """
    audiences = None if audience is None or isinstance(audience, str) else tuple(audience)
    aud: str | tuple[str, ...] | None = audience if isinstance(audience, str) else audiences
    issuers = None if issuer is None or isinstance(issuer, str) else tuple(issuer)
    iss: str | tuple[str, ...] | None = issuer if isinstance(issuer, str) else issuers
    required = tuple(require)
    decode = verifier.decode

    def unauthorized(detail: str, challenge: str) -> HTTPException:
        return HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=detail,
            headers={"WWW-Authenticate": challenge},
        )

    # An async dependency: decode takes tens of microseconds (the Rust path releases the GIL for
    # the signature), less than a hop to FastAPI's thread pool.
    async def claims(request: Request) -> dict[str, Any]:
        header = request.headers.get("authorization")
        if not header:
            raise unauthorized("Not authenticated", _challenge(realm))
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized(
                "Expected a Bearer token",
                _challenge(realm, "invalid_request", "Expected a Bearer token"),
            )
        try:
            return decode(token, audience=aud, issuer=iss, leeway=leeway, require=required)
        except TokenError as exc:
            description = _DESCRIPTIONS.get(type(exc), "The token is malformed")
            raise unauthorized(
                description, _challenge(realm, "invalid_token", description)
            ) from None

    return claims
