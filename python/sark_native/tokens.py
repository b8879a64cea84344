"""The public ``Ed25519Signer`` and ``KeySet``: EdDSA (Ed25519) JWS/JWT/JWK, Rust or pure Python.

``Ed25519Signer.generate()`` / ``.from_pem()`` / ``.from_jwk()`` and ``KeySet.from_jwks()`` /
``.from_signers()`` return the backend's object itself (no wrapper on the hot path): the native
``sark_native._native.Ed25519Signer`` or the pure-Python twin on joserfc. ``isinstance(obj,
Ed25519Signer)`` holds for both. Both backends write byte-identical tokens for the same key,
claims and headers, and raise the same exceptions; the rules are in ``docs/tokens.md``.
"""

from __future__ import annotations

from abc import ABCMeta
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from . import _backend
from ._backend import BackendChoice
from .exceptions import BackendUnavailableError

__all__ = ["MAX_TOKEN_SIZE", "Ed25519Signer", "KeySet"]

#: The largest token ``decode`` looks at, in bytes; a larger one is a ``DecodeError``.
MAX_TOKEN_SIZE = 16 * 1024


_python_registered = False


def _python() -> Any:
    """The pure-Python twin, imported on first use: it needs joserfc and cryptography (the
    ``tokens`` extra), which ``import sark_native`` should not pay for."""
    global _python_registered
    try:
        from ._fallback import tokens
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the pure-Python token path needs joserfc: pip install 'sark-native[tokens]' ({exc})"
        ) from exc
    if not _python_registered:
        Ed25519Signer.register(tokens.PyEd25519Signer)
        KeySet.register(tokens.PyKeySet)
        _python_registered = True
    return tokens


class Ed25519Signer(metaclass=ABCMeta):  # noqa: B024 - a virtual base: both backends register
    """An Ed25519 private key with its ``kid`` that signs and verifies compact JWS (JWT).

    Build one with :meth:`generate`, :meth:`from_pem` or :meth:`from_jwk`. The ``kid`` defaults
    to the key's RFC 7638 thumbprint. Private key material is zeroized when the object goes (Rust)
    and never appears in ``repr``.
    """

    def __new__(cls, *args: object, **kwargs: object) -> Ed25519Signer:
        raise TypeError(
            "use Ed25519Signer.generate(), Ed25519Signer.from_pem() or Ed25519Signer.from_jwk()"
        )

    @staticmethod
    def generate(kid: str | None = None, *, backend: BackendChoice = "auto") -> Ed25519Signer:
        """A new key from the operating system's randomness."""
        if _backend.resolve("tokens", backend) == "rust":
            native: Ed25519Signer = _backend.native().Ed25519Signer.generate(kid)
            return native
        signer: Ed25519Signer = _python().PyEd25519Signer.generate(kid)
        return signer

    @staticmethod
    def from_pem(
        pem: str | bytes, kid: str | None = None, *, backend: BackendChoice = "auto"
    ) -> Ed25519Signer:
        """A key from a PKCS#8 ``-----BEGIN PRIVATE KEY-----`` PEM; another key type or curve is
        a ``ValueError``."""
        if _backend.resolve("tokens", backend) == "rust":
            native: Ed25519Signer = _backend.native().Ed25519Signer.from_pem(pem, kid)
            return native
        signer: Ed25519Signer = _python().PyEd25519Signer.from_pem(pem, kid)
        return signer

    @staticmethod
    def from_jwk(
        jwk: Mapping[str, Any], kid: str | None = None, *, backend: BackendChoice = "auto"
    ) -> Ed25519Signer:
        """A key from a private RFC 8037 JWK (``kty`` OKP, ``crv`` Ed25519, ``x``, ``d``). The
        ``kid`` is the argument, else the JWK's ``kid``, else the thumbprint."""
        if _backend.resolve("tokens", backend) == "rust":
            native: Ed25519Signer = _backend.native().Ed25519Signer.from_jwk(jwk, kid)
            return native
        signer: Ed25519Signer = _python().PyEd25519Signer.from_jwk(jwk, kid)
        return signer

    if TYPE_CHECKING:
        # The interface both backends implement (for type checkers; see _native.pyi).
        @property
        def kid(self) -> str: ...
        @property
        def backend(self) -> str: ...
        def thumbprint(self) -> str: ...
        def private_pem(self) -> bytes: ...
        def public_pem(self) -> bytes: ...
        def public_jwk(self) -> dict[str, Any]: ...
        def private_jwk(self) -> dict[str, Any]: ...
        def sign(self, data: bytes | bytearray) -> bytes: ...
        def verify(self, data: bytes | bytearray, signature: bytes | bytearray) -> bool: ...
        def encode(
            self,
            claims: Mapping[str, Any],
            *,
            headers: Mapping[str, Any] | None = None,
            expires_in: float | timedelta | None = None,
            alg: str = "EdDSA",
            now: float | None = None,
        ) -> str: ...
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


class KeySet(metaclass=ABCMeta):  # noqa: B024 - a virtual base: both backends register
    """Ed25519 keys chosen by ``kid``, for verification with key rotation.

    A token without ``kid`` is checked with the only key of a one-key set; an unknown ``kid``, or
    no ``kid`` among several keys, is an ``InvalidSignatureError``. A set from :meth:`from_jwks`
    is public-only (verifies, cannot sign); one from :meth:`from_signers` can also ``encode``.
    :meth:`to_jwks` never writes private members.
    """

    def __new__(cls, *args: object, **kwargs: object) -> KeySet:
        raise TypeError("use KeySet.from_jwks() or KeySet.from_signers()")

    @staticmethod
    def from_jwks(
        jwks: Mapping[str, Any] | str | bytes, *, backend: BackendChoice = "auto"
    ) -> KeySet:
        """The public keys of a JWKS (``{"keys": [...]}``, a mapping or its JSON text); every
        key must be an Ed25519 OKP key (else ``ValueError``); private members are ignored."""
        if _backend.resolve("tokens", backend) == "rust":
            native: KeySet = _backend.native().KeySet.from_jwks(jwks)
            return native
        keyset: KeySet = _python().PyKeySet.from_jwks(jwks)
        return keyset

    @staticmethod
    def from_signers(
        signers: Iterable[Ed25519Signer], *, backend: BackendChoice = "auto"
    ) -> KeySet:
        """A set of signers' keys: it verifies and can sign. Signers of the other backend are
        carried over through their PKCS#8 PEM."""
        if _backend.resolve("tokens", backend) == "rust":
            module = _backend.native()
            native_signers = [
                s
                if isinstance(s, module.Ed25519Signer)
                else module.Ed25519Signer.from_pem(s.private_pem(), s.kid)
                for s in signers
            ]
            native: KeySet = module.KeySet.from_signers(native_signers)
            return native
        py = _python()
        py_signers = [
            s
            if isinstance(s, py.PyEd25519Signer) or not isinstance(s, Ed25519Signer)
            else py.PyEd25519Signer.from_pem(s.private_pem(), s.kid)
            for s in signers
        ]
        keyset: KeySet = py.PyKeySet.from_signers(py_signers)
        return keyset

    if TYPE_CHECKING:

        @property
        def kids(self) -> list[str]: ...
        @property
        def backend(self) -> str: ...
        def to_jwks(self) -> dict[str, Any]: ...
        def __len__(self) -> int: ...
        def __contains__(self, kid: object) -> bool: ...
        def encode(
            self,
            claims: Mapping[str, Any],
            *,
            kid: str | None = None,
            headers: Mapping[str, Any] | None = None,
            expires_in: float | timedelta | None = None,
            alg: str = "EdDSA",
            now: float | None = None,
        ) -> str: ...
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


if _backend.RUST_AVAILABLE:
    Ed25519Signer.register(_backend.native().Ed25519Signer)
    KeySet.register(_backend.native().KeySet)
