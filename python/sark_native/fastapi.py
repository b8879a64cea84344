"""FastAPI glue: the rollout admin router and the Bearer-token dependency.

Needs FastAPI (the ``fastapi`` extra).

* :func:`admin_router` (``_fastapi_admin``): ``GET /admin/rollout``, ``POST
  /admin/rollout/update``, ``POST /admin/rollout/rollback``, behind a SHA-256-checked Bearer token,
  with one audit line per change.
* :func:`bearer_claims` (``_fastapi_auth``): a dependency that verifies a Bearer token with a
  ``KeySet`` or an ``Ed25519Signer`` and hands the route its claims, or answers 401 with
  ``WWW-Authenticate``.
"""

from ._fastapi_admin import admin_router
from ._fastapi_auth import TokenVerifier, bearer_claims

__all__ = ["TokenVerifier", "admin_router", "bearer_claims"]
