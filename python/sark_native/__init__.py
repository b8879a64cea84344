"""sark_native: native (Rust) hot paths for a FastAPI security gateway.

Each component has a Rust implementation and a pure-Python twin with the same API and results;
``backend_info()`` says which one serves each component and why.
"""

from __future__ import annotations

from typing import Any

from . import _backend, exceptions, flags, sidecar
from ._version import VERSION as __version__
from .cache import Cache
from .hashing import PasswordHasher, configure
from .policy import PolicyEngine
from .sidecar import Sidecar, SidecarClient
from .tokens import Ed25519Signer, KeySet

__all__ = [
    "RUST_AVAILABLE",
    "Cache",
    "Ed25519Signer",
    "KeySet",
    "PasswordHasher",
    "PolicyEngine",
    "Sidecar",
    "SidecarClient",
    "__version__",
    "backend_info",
    "configure",
    "exceptions",
    "flags",
    "sidecar",
]

#: ``True`` when the Rust extension is loaded and enabled.
RUST_AVAILABLE: bool = _backend.RUST_AVAILABLE


def backend_info() -> dict[str, Any]:
    """Which backend each component uses under ``backend="auto"``, and why."""
    return _backend.info()
