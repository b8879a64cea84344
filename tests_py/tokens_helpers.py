"""Helpers shared by the token tests: fixed keys, a clock, and a forger of raw tokens."""

from __future__ import annotations

import base64
import json
from typing import Any

from sark_native import Ed25519Signer

#: A fixed "now" for claim checks (2023-11-14T22:13:20Z).
NOW = 1_700_000_000.0

#: RFC 8037 appendix A.1 (the RFC 8032 test 1 key).
RFC8037_JWK = {
    "kty": "OKP",
    "crv": "Ed25519",
    "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
}

#: The canonical encodings of the eight small-order points (identity, orders 2, 4, 8).
SMALL_ORDER = [
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
]


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload of a compact JWS, without any check."""
    h, p, _ = token.split(".")
    return json.loads(b64d(h)), json.loads(b64d(p))


def raw(value: Any) -> bytes:
    """``value`` as JSON bytes, or ``value`` itself when it is already bytes or str."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


def forge(signer: Ed25519Signer, header: Any, payload: Any) -> str:
    """A token with this header and payload, validly signed by ``signer`` (however odd the
    header and payload are), so that only the check under test can fail."""
    signing_input = f"{b64e(raw(header))}.{b64e(raw(payload))}"
    return f"{signing_input}.{b64e(signer.sign(signing_input.encode()))}"
