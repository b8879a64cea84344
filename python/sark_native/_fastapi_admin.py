"""FastAPI glue: the rollout admin router (exported by ``sark_native.fastapi``).

``admin_router(flags, token_sha256=...)`` serves

* ``GET  /admin/rollout`` — every known feature's percentage, and whether Redis is healthy;
* ``POST /admin/rollout/update``   ``{"feature": str, "percentage": int 0..100}``;
* ``POST /admin/rollout/rollback`` ``{"feature": str}`` (sets 0% everywhere at once).

Every request needs ``Authorization: Bearer <token>``; the token's SHA-256 is compared with the
configured hash in constant time (``hmac.compare_digest``), so the token itself is never stored.
``token_sha256`` is one hex digest, or a mapping of operator name -> hex digest so the audit log
can say who. Missing or wrong token: 401. Bad feature or percentage: 422. Redis unreachable: 503
(nothing changed). Each change writes one audit line at INFO on the ``sark_native.audit`` logger:
who (operator and client address), what, before and after.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time,
# and `Operator` below is local to admin_router.
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from .flags import FeatureFlags, check_feature

__all__ = ["admin_router"]

audit_logger = logging.getLogger("sark_native.audit")

_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

Percentage = Annotated[int, Field(strict=True, ge=0, le=100)]
FeatureName = Annotated[str, Field(strict=True, min_length=1, max_length=200)]


class RolloutUpdate(BaseModel):
    """Body of ``POST /admin/rollout/update``."""

    model_config = ConfigDict(extra="forbid")
    feature: FeatureName
    percentage: Percentage


class RolloutRollback(BaseModel):
    """Body of ``POST /admin/rollout/rollback``."""

    model_config = ConfigDict(extra="forbid")
    feature: FeatureName


def _digests(token_sha256: str | Mapping[str, str]) -> list[tuple[str, bytes]]:
    items = {"admin": token_sha256} if isinstance(token_sha256, str) else dict(token_sha256)
    if not items:
        raise ValueError("token_sha256: give at least one SHA-256 hex digest")
    out = []
    for name, digest in items.items():
        if not isinstance(digest, str) or not _HEX_SHA256.fullmatch(digest):
            raise ValueError(f"token_sha256 for {name!r} must be a SHA-256 hex digest (64 hex)")
        out.append((name, bytes.fromhex(digest)))
    return out


def admin_router(
    flags: FeatureFlags,
    *,
    token_sha256: str | Mapping[str, str],
    prefix: str = "/admin/rollout",
    tags: list[str | Enum] | None = None,
) -> APIRouter:
    """The authenticated rollout admin API over ``flags`` (see the module doc)."""
    digests = _digests(token_sha256)

    def operator(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        who = None
        if scheme.lower() == "bearer" and token:
            presented = hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).digest()
            # Compare with every configured digest, no early exit: the time taken does not say
            # which one (if any) matched.
            for name, digest in digests:
                if hmac.compare_digest(presented, digest) and who is None:
                    who = name
        if who is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a valid Bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        host = request.client.host if request.client else "unknown"
        return f"{who}@{host}"

    Operator = Annotated[str, Depends(operator)]
    router = APIRouter(prefix=prefix, tags=tags or ["rollout"])

    async def change(who: str, action: str, feature: str, pct: int) -> dict[str, Any]:
        try:
            check_feature(feature)
            before = await flags.set_rollout(feature, pct)
        except (ValueError, TypeError) as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        except Exception as exc:  # Redis unreachable: nothing changed
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"rollout store unavailable: {type(exc).__name__}",
            ) from exc
        audit_logger.info(
            "rollout %s by %s: feature=%s before=%d after=%d", action, who, feature, before, pct
        )
        return {"feature": feature, "percentage": pct, "previous": before}

    @router.get("")
    async def list_rollouts(who: Operator) -> dict[str, Any]:
        return {
            "features": flags.rollouts(),
            "redis": flags.redis_enabled,
            "healthy": flags.healthy,
        }

    @router.post("/update")
    async def update_rollout(body: RolloutUpdate, who: Operator) -> dict[str, Any]:
        return await change(who, "update", body.feature, body.percentage)

    @router.post("/rollback")
    async def rollback_rollout(body: RolloutRollback, who: Operator) -> dict[str, Any]:
        return await change(who, "rollback", body.feature, 0)

    return router
