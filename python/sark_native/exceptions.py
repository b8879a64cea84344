"""The exception tree of sark_native, defined once and shared by both backends.

The Rust extension imports these classes (it never defines its own), so a caller catches the same
class whichever backend served the call. Each error also subclasses the standard exception a
caller would already catch (``ValueError``, ``ConnectionError``, ``TimeoutError``, ...).
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "CacheError",
    "DecodeError",
    "ExpiredSignatureError",
    "ImmatureSignatureError",
    "InvalidAudienceError",
    "InvalidHashError",
    "InvalidIssuerError",
    "InvalidSignatureError",
    "MissingRequiredClaimError",
    "OverloadedError",
    "PolicyCompileError",
    "PolicyError",
    "PolicyEvaluationError",
    "PolicyNotFoundError",
    "SarkNativeError",
    "SidecarError",
    "SidecarProtocolError",
    "SidecarRemoteError",
    "SidecarTimeoutError",
    "SidecarUnavailableError",
    "TokenError",
    "VerificationError",
    "VerifyMismatchError",
]


class SarkNativeError(Exception):
    """Base class of every error raised by sark_native."""


class BackendUnavailableError(SarkNativeError, RuntimeError):
    """The requested backend cannot be used (extension missing, broken, or disabled)."""


class CacheError(SarkNativeError, RuntimeError):
    """A cache operation cannot proceed, e.g. a factory re-entering its own key."""


class OverloadedError(SarkNativeError, RuntimeError):
    """A bounded queue is full; the call was shed instead of queued."""


# --- policy -------------------------------------------------------------------------------------


class PolicyError(SarkNativeError):
    """Base class of policy engine errors."""


class PolicyCompileError(PolicyError, ValueError):
    """A policy does not parse or compile; nothing was changed.

    ``policy``, ``line`` and ``column`` (1-based) say where, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        policy: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.policy = policy
        self.line = line
        self.column = column


class PolicyNotFoundError(PolicyError, LookupError):
    """A policy name is unknown (``remove_policy``)."""


class PolicyEvaluationError(PolicyError):
    """An evaluation failed: a strict built-in error, a conflict, a limit, or a bad input."""


# --- password hashing ---------------------------------------------------------------------------


class VerificationError(SarkNativeError):
    """A password hash could not be verified."""


class VerifyMismatchError(VerificationError):
    """The password does not match the hash."""


class InvalidHashError(VerificationError, ValueError):
    """The hash string is malformed or has parameters beyond the configured caps."""


# --- tokens -------------------------------------------------------------------------------------


class TokenError(SarkNativeError, ValueError):
    """Base class of token (JWS/JWT) errors."""


class DecodeError(TokenError):
    """A token is malformed: segments, base64url, JSON, claim types or size."""


class InvalidSignatureError(TokenError):
    """The signature does not verify, or no key matches the token."""


class ExpiredSignatureError(TokenError):
    """The token's ``exp`` has passed."""


class ImmatureSignatureError(TokenError):
    """The token's ``nbf`` or ``iat`` lies in the future."""


class InvalidAudienceError(TokenError):
    """The token's ``aud`` does not match the expected audience."""


class InvalidIssuerError(TokenError):
    """The token's ``iss`` does not match the expected issuer."""


class MissingRequiredClaimError(TokenError):
    """A required claim is absent."""


# --- ML sidecar ---------------------------------------------------------------------------------


class SidecarError(SarkNativeError, ConnectionError):
    """Base class of sidecar IPC errors."""


class SidecarUnavailableError(SidecarError):
    """No live worker could take the request, or the worker died while serving it."""


class SidecarTimeoutError(SidecarError, TimeoutError):
    """The request was not answered in time; a late answer is dropped."""


class SidecarProtocolError(SidecarError):
    """The peer broke the wire protocol; the connection was dropped."""


class SidecarRemoteError(SidecarError):
    """The worker's handler raised; ``remote_type`` and ``remote_message`` say what."""

    def __init__(self, remote_type: str, remote_message: str) -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
