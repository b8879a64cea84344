"""The sidecar wire protocol: frame constants, the frame reader, encoding and decoding of requests
and responses, the params validator and the argument checks both sides share.

Used by the worker (``_worker.py``) and the asyncio client (``_fallback/sidecar.py``). The Rust
client implements the same rules; ``docs/sidecar.md`` is the contract both follow.

A frame is a 4-byte big-endian length ``N`` then ``N`` bytes of UTF-8 JSON, with
``1 <= N <= max_frame``. Requests are ``{"id": u64, "method": str, "params": any}``; responses
``{"id": u64, "result": any}`` or ``{"id": u64, "error": {"type": str, "message": str}}``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, NamedTuple

from ..exceptions import SidecarProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "MAX_ERROR_MESSAGE",
    "MAX_FRAME_LIMIT",
    "MAX_ID",
    "METHOD_NOT_FOUND",
    "PING",
    "FrameReader",
    "PreparedRequest",
    "Request",
    "Response",
    "check_max_frame",
    "check_positive",
    "check_socket_path",
    "decode_frame",
    "encode_error",
    "encode_result",
    "parse_request",
    "parse_response",
    "prepare_request",
    "socket_path_limit",
    "validate_params",
]

#: Bytes of the length prefix.
HEADER_SIZE = 4
#: Default cap on a frame's body, both directions: 16 MiB.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: The largest cap a 4-byte length can express.
MAX_FRAME_LIMIT = 2**32 - 1
#: Containers (lists, tuples, dicts) may nest at most this deep in params.
MAX_DEPTH = 128
#: Ids are unsigned 64-bit integers.
MAX_ID = 2**64 - 1
#: Integers in params must fit an i64 or a u64: [-2**63, 2**64).
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
#: The health method every worker answers on its event loop, never queued behind handler work.
PING = "__ping__"
#: The error type of a call to a method the handler does not have.
METHOD_NOT_FOUND = "MethodNotFound"
#: Error messages longer than this many characters are cut (a response must fit a frame).
MAX_ERROR_MESSAGE = 65536

# Compact UTF-8 JSON; NaN and infinities are refused (they are not JSON).
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
# The same without the circular-reference check: validated params cannot be circular.
_encode_checked = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
).encode


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Like json.loads, but NaN, Infinity and -Infinity are refused (serde_json refuses them too).
_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


# --- argument checks ----------------------------------------------------------------------------


def socket_path_limit() -> int:
    """Size of ``sun_path`` on this OS, the terminating NUL included (Linux 108, macOS/BSD 104)."""
    return 108 if sys.platform.startswith("linux") else 104


def check_socket_path(path: object) -> str:
    """``path`` as a ``str`` if it can name a Unix socket here, else ``TypeError``/``ValueError``.

    A path longer than ``sun_path`` allows (107 bytes on Linux, 103 on macOS, UTF-8 encoded)
    raises ``ValueError`` before anything is bound or connected.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"socket_path must be a str or os.PathLike, not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError("socket_path must be a str path, not bytes")
    if not text:
        raise ValueError("socket_path must not be empty")
    if "\0" in text:
        raise ValueError("socket_path must not contain NUL characters")
    size = len(os.fsencode(text))
    limit = socket_path_limit()
    if size >= limit:
        raise ValueError(
            f"socket path is {size} bytes long, over the OS limit of {limit - 1} bytes "
            f"({limit} with the terminating NUL) for Unix sockets: {text!r}; use a shorter "
            "directory (for instance one made with tempfile.mkdtemp(dir='/tmp'))"
        )
    return text


def check_max_frame(value: object) -> int:
    """``value`` if it is a frame cap in 1..2**32-1, else ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_frame must be an int, not {type(value).__name__}")
    if not 1 <= value <= MAX_FRAME_LIMIT:
        raise ValueError(f"max_frame must be between 1 and {MAX_FRAME_LIMIT}, got {value}")
    return value


def check_positive(value: object, name: str) -> float:
    """``value`` as a float if it is a finite number > 0, else ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


# --- the params validator -----------------------------------------------------------------------


def _path(keys: list[object]) -> str:
    parts = ["params"]
    for key in keys:
        parts.append(
            f"[{json.dumps(key, ensure_ascii=False)}]" if isinstance(key, str) else f"[{key}]"
        )
    return "".join(parts)


def _scalar_error(value: object) -> str | None:
    """Why a non-container value cannot be sent, or None when it can."""
    if value is None or isinstance(value, (str, bool)):
        return None
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return None
        return f"int {value} is out of range (integers must be in [-2**63, 2**64))"
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"float {value!r} is not JSON (NaN and infinities are refused)"
    return f"{type(value).__name__} is not JSON-serializable"


def _plain_number(kind: type, item: Any) -> bool:
    """The fast path: an exact int in range or a finite float."""
    if kind is int:
        return bool(INT_MIN <= item <= INT_MAX)
    return kind is float and math.isfinite(item)


def _walk(value: object, depth: int, keys: list[object]) -> None:
    if isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise TypeError(f"{_path(keys)}: nested more than {MAX_DEPTH} deep")
        for i, item in enumerate(value):
            kind = type(item)
            if kind is str or kind is bool or item is None or _plain_number(kind, item):
                continue
            keys.append(i)
            _walk(item, depth + 1, keys)
            keys.pop()
        return
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise TypeError(f"{_path(keys)}: nested more than {MAX_DEPTH} deep")
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{_path(keys)}: dict key {key!r} is a {type(key).__name__}, not a str"
                )
            kind = type(item)
            if kind is str or kind is bool or item is None or _plain_number(kind, item):
                continue
            keys.append(key)
            _walk(item, depth + 1, keys)
            keys.pop()
        return
    error = _scalar_error(value)
    if error is not None:
        raise TypeError(f"{_path(keys)}: {error}")


def _find_surrogate(value: object, keys: list[object]) -> str | None:
    """The path of the first string (value or key) that is not valid Unicode, if any."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _path(keys)
        return None
    if isinstance(value, (list, tuple)):
        items: Any = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    else:
        return None
    for key, item in items:
        if isinstance(key, str):
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                return f"{_path(keys)}: dict key {key!r}"
        keys.append(key)
        found = _find_surrogate(item, keys)
        keys.pop()
        if found is not None:
            return found
    return None


def validate_params(params: object) -> None:
    """Raises ``TypeError`` naming the offending value's path unless ``params`` can be sent.

    Allowed: ``None``, ``bool``, ``int`` in [-2**63, 2**64), finite ``float``, ``str``,
    ``list``/``tuple``, ``dict`` with ``str`` keys (subclasses included), containers nested at
    most 128 deep. Everything else (NaN, infinities, bytes, sets, other objects, non-``str`` keys,
    deeper nesting, circular containers, bigger integers) is refused. Strings that are not valid
    Unicode (lone surrogates) are found by :func:`prepare_request`, which encodes them.
    """
    _walk(params, 0, [])


# --- requests -----------------------------------------------------------------------------------


class PreparedRequest(NamedTuple):
    """A validated request waiting for its id: ``prefix + id + suffix`` is the frame body."""

    method: str
    #: The encoded ``,"method":...,"params":...}`` after the id.
    suffix: bytes

    def frame(self, req_id: int, max_frame: int) -> bytes:
        """The whole frame (length prefix included) for ``req_id``; ``ValueError`` when it is
        over ``max_frame``."""
        digits = str(req_id).encode("ascii")
        size = 6 + len(digits) + len(self.suffix)  # len(b'{"id":') == 6
        if size > max_frame:
            raise ValueError(
                f"the request to {self.method!r} is {size} bytes encoded, over max_frame "
                f"({max_frame} bytes)"
            )
        return b"".join((size.to_bytes(4, "big"), b'{"id":', digits, self.suffix))


def check_method(method: object) -> str:
    """``method`` if it is a non-empty ``str`` of valid Unicode, else ``TypeError`` or
    ``ValueError``."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, not {type(method).__name__}")
    if not method:
        raise ValueError("method must be a non-empty str")
    try:
        method.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"method {method!r} is not valid Unicode") from None
    return method


def prepare_request(method: object, params: object) -> PreparedRequest:
    """Validates ``method`` and ``params`` and encodes everything but the id.

    ``TypeError``/``ValueError`` for a bad method, ``TypeError`` naming the path for params that
    cannot be sent. Nothing has been sent when it raises.
    """
    name = check_method(method)
    _walk(params, 0, [])
    text = _encode_checked(params)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        where = _find_surrogate(params, []) or "params"
        raise TypeError(f"{where}: str is not valid Unicode (lone surrogate)") from None
    suffix = b"".join((b',"method":', _encode(name).encode("utf-8"), b',"params":', encoded, b"}"))
    return PreparedRequest(name, suffix)


# --- frames -------------------------------------------------------------------------------------


class FrameReader:
    """Splits a byte stream into frame bodies.

    :meth:`feed` raises :class:`SidecarProtocolError` as soon as a length prefix is 0 or over
    ``max_frame``: the body is never read nor allocated (only what already arrived is buffered).
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete frame bodies in the stream so far (possibly none)."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            size = int.from_bytes(buf[pos : pos + HEADER_SIZE], "big")
            if size == 0 or size > self.max_frame:
                raise SidecarProtocolError(
                    f"frame length {size} is out of range (1..{self.max_frame})"
                )
            stop = pos + HEADER_SIZE + size
            if stop > end:
                break
            frames.append(bytes(buf[pos + HEADER_SIZE : stop]))
            pos = stop
        if pos:
            del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)


def decode_frame(body: bytes) -> Any:
    """The JSON value of a frame body, or :class:`SidecarProtocolError` (invalid UTF-8 or JSON,
    NaN/Infinity, nesting too deep for the decoder)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SidecarProtocolError(f"frame is not valid UTF-8: {exc}") from None
    try:
        return _decode(text)
    except (ValueError, RecursionError) as exc:
        raise SidecarProtocolError(f"frame is not valid JSON: {exc}") from None


def _check_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise SidecarProtocolError(f"id must be an integer in 0..2**64-1, got {value!r}")
    return value


class Request(NamedTuple):
    id: int
    method: str
    params: Any


def parse_request(message: object) -> Request:
    """A decoded request, or :class:`SidecarProtocolError` (not an object, bad id or method)."""
    if not isinstance(message, dict):
        raise SidecarProtocolError(f"a request must be a JSON object, got {type(message).__name__}")
    req_id = _check_id(message.get("id"))
    method = message.get("method")
    if not isinstance(method, str):
        raise SidecarProtocolError(f"method must be a string, got {method!r}")
    return Request(req_id, method, message.get("params"))


class Response(NamedTuple):
    id: int
    #: True for ``result``; False for ``error``, whose ``value`` is ``(type, message)``.
    ok: bool
    value: Any


def parse_response(message: object) -> Response:
    """A decoded response, or :class:`SidecarProtocolError` (not an object, bad id, neither or
    both of ``result`` and ``error``, an error that is not ``{"type": str, "message": str}``)."""
    if not isinstance(message, dict):
        raise SidecarProtocolError(
            f"a response must be a JSON object, got {type(message).__name__}"
        )
    resp_id = _check_id(message.get("id"))
    has_result = "result" in message
    error = message.get("error")
    if has_result == ("error" in message):
        raise SidecarProtocolError(
            f"response {resp_id} must have exactly one of 'result' and 'error'"
        )
    if has_result:
        return Response(resp_id, True, message["result"])
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("type"), str)
        or not isinstance(error.get("message"), str)
    ):
        raise SidecarProtocolError(
            f'response {resp_id}: \'error\' must be {{"type": str, "message": str}}'
        )
    return Response(resp_id, False, (error["type"], error["message"]))


# --- responses (worker side) --------------------------------------------------------------------


def _with_header(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def encode_result(req_id: int, result: object, max_frame: int) -> bytes:
    """The response frame carrying ``result``.

    Raises what serialization raises (``TypeError`` for an object JSON cannot encode,
    ``ValueError`` for NaN/infinities or a circular container, ``RecursionError``,
    ``UnicodeEncodeError`` for lone surrogates) and ``ValueError`` for a response over
    ``max_frame``: the worker turns each into an error response.
    """
    body = _encode({"id": req_id, "result": result}).encode("utf-8")
    if len(body) > max_frame:
        raise ValueError(f"the response is {len(body)} bytes encoded, over max_frame ({max_frame})")
    return _with_header(body)


def _safe_text(text: str) -> str:
    if len(text) > MAX_ERROR_MESSAGE:
        text = text[:MAX_ERROR_MESSAGE] + "... (cut)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def encode_error(
    req_id: int, error_type: str, message: str, max_frame: int = DEFAULT_MAX_FRAME
) -> bytes:
    """The error response frame ``{"id", "error": {"type", "message"}}``; never raises for a str
    type and message (lone surrogates are escaped, long messages cut, and cut further when the
    frame would be over ``max_frame``)."""
    kind = _safe_text(error_type)[:256]
    text = _safe_text(message)
    while True:
        body = _encode({"id": req_id, "error": {"type": kind, "message": text}}).encode("utf-8")
        if len(body) <= max_frame or not text:
            return _with_header(body)
        text = text[: len(text) // 2]
