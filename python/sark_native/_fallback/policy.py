"""The pure-Python ``PolicyEngine``: the same API spoken over OPA's REST API with httpx.

It talks to a real OPA or to ``policyd`` (``python -m sark_native.policyd``), over TCP
(``opa_url="http://127.0.0.1:8181"``) or a Unix socket (``opa_url="unix:///run/policyd.sock"``),
with one pooled client per engine (and one async client, created on the first
``evaluate_async``). Inputs are checked here before they are sent, with the same rules and
messages as the native path (``TypeError`` for what is not JSON-shaped, ``PolicyEvaluationError``
beyond the depth and size limits), so both backends refuse the same inputs the same way.

An optional decision cache (a :class:`sark_native.Cache`) keys decisions by path, the engine's
version (policies and data it loaded) and the input; it assumes this engine is the server's only
writer (entries also expire with the cache's ttl).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ..exceptions import (
    PolicyCompileError,
    PolicyError,
    PolicyEvaluationError,
    PolicyNotFoundError,
)


def _httpx() -> Any:
    """httpx2 (Python 3.11+, the maintained line that starlette uses) or httpx: the same API."""
    try:
        import httpx2  # type: ignore[import-not-found, unused-ignore]

        return httpx2
    except ImportError:
        pass
    try:
        import httpx  # type: ignore[import-not-found, unused-ignore]

        return httpx
    except ImportError:
        from ..exceptions import BackendUnavailableError

        raise BackendUnavailableError(
            "the HTTP policy path needs httpx2 (Python 3.11+) or httpx: "
            "pip install 'sark-native[policy]'"
        ) from None


__all__ = [
    "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_MAX_INPUT_DEPTH",
    "DEFAULT_TIME_LIMIT",
    "PyPolicyEngine",
    "check_path",
    "check_policy_name",
    "policy_metrics",
]

DEFAULT_TIME_LIMIT = 1.0
DEFAULT_MAX_INPUT_DEPTH = 64
DEFAULT_MAX_INPUT_BYTES = 1 << 20
MAX_DATA_DEPTH = 512
MAX_POLICY_NAME = 256

_PATH = re.compile(r"data(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NAME = re.compile(r"[A-Za-z0-9._/-]+")

#: Upper bounds (seconds) of the evaluation histogram: the native path's buckets.
BUCKETS = (
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
ERROR_TYPES = ("evaluation", "input", "internal", "other")

_metrics_lock = threading.Lock()
_metrics: dict[str, Any] = {
    "evaluations": 0,
    "bucket_counts": [0] * (len(BUCKETS) + 1),
    "sum_seconds": 0.0,
    "errors": dict.fromkeys(ERROR_TYPES, 0),
    "policies": 0,
}


def policy_metrics() -> dict[str, Any]:
    """The counters of the HTTP path in this process (the Collector reads them)."""
    with _metrics_lock:
        out = dict(_metrics)
        out["bucket_counts"] = list(_metrics["bucket_counts"])
        out["errors"] = dict(_metrics["errors"])
    out["buckets"] = list(BUCKETS)
    return out


def _record(seconds: float, error_type: str | None) -> None:
    slot = next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
    with _metrics_lock:
        _metrics["evaluations"] += 1
        _metrics["bucket_counts"][slot] += 1
        _metrics["sum_seconds"] += seconds
        if error_type is not None:
            _metrics["errors"][error_type] += 1


def check_path(path: object) -> str:
    """A document path: ``data`` or ``data.<ident>(.<ident>)*``."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if not _PATH.fullmatch(path):
        raise ValueError(
            f"path must be 'data' or 'data.<name>[.<name>...]' with identifier names, not {path!r}"
        )
    return path


def check_policy_name(name: object) -> str:
    """1-256 characters of ``[A-Za-z0-9._/-]``: a file name and an OPA policy id."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if len(name) > MAX_POLICY_NAME or not _NAME.fullmatch(name):
        raise ValueError(
            f"policy name must be 1-{MAX_POLICY_NAME} characters of A-Z a-z 0-9 . _ / -, "
            f"not {name!r}"
        )
    return name


def _seconds(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None")
    if not (math.isfinite(value) and 0 < value < 1e9):
        raise ValueError(f"{what} must be a positive number of seconds or None, not {value}")
    return float(value)


def check_settings(
    *,
    rego_v0: object,
    time_limit: object,
    max_input_depth: object,
    max_input_bytes: object,
    vm: object,
    strict: object,
    decision_cache: object,
) -> float | None:
    """Checks an engine's settings (both backends take the same); returns the time limit."""
    for what, flag in (("rego_v0", rego_v0), ("vm", vm), ("strict", strict)):
        if not isinstance(flag, bool):
            raise TypeError(f"{what} must be a bool, not {type(flag).__name__}")
    for what, n in (("max_input_depth", max_input_depth), ("max_input_bytes", max_input_bytes)):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"{what} must be an int, not {type(n).__name__}")
        if not 1 <= n <= sys.maxsize:
            raise ValueError(f"{what} must be between 1 and {sys.maxsize}, not {n}")
    if decision_cache is not None and not all(
        callable(getattr(decision_cache, m, None)) for m in ("get", "set")
    ):
        raise TypeError(
            "decision_cache must be a sark_native.Cache (an object with get and set), "
            f"not {type(decision_cache).__name__}"
        )
    return _seconds(time_limit, "time_limit")


class _Refused(Exception):
    def __init__(self, kind: type[Exception], what: str, path: str | None) -> None:
        self.kind = kind
        self.what = what
        self.path = path

    def error(self) -> Exception:
        return self.kind(self.what if self.path is None else f"{self.path}: {self.what}")


def _json_string_len(s: str) -> int:
    # Compact JSON of a str (ensure_ascii=False), in UTF-8 bytes, as the native path counts it.
    return len(json.dumps(s, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _check_str(s: str, path: str, what: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused(
            TypeError, f"{what} with a lone surrogate is not valid UTF-8", path
        ) from None


def validate(
    value: object, root: str, max_depth: int, max_bytes: int, limit: type[Exception]
) -> None:
    """Raises what the native conversion raises for ``value``: ``TypeError`` for what is not
    JSON-shaped, ``limit`` beyond ``max_depth``/``max_bytes``; the messages word for word, and the
    same first error when there are several (the same depth-first order and byte accounting)."""
    total = 0

    def spend(n: int) -> None:
        nonlocal total
        total += n
        if total > max_bytes:
            raise _Refused(
                limit, f"input larger than max_input_bytes={max_bytes} (as compact JSON)", None
            )

    # Work items, depth first: ("v", value, depth, path, comma) visits a value (after its comma);
    # ("e", key, value, depth, path, comma) visits a dict entry.
    stack: list[tuple[Any, ...]] = [("v", value, 0, root, False)]
    try:
        while stack:
            work = stack.pop()
            if work[0] == "e":
                _, k, child, d, p, comma = work
                if not isinstance(k, str):
                    raise _Refused(
                        TypeError, f"dict key {k!r} of type {type(k).__name__} is not a str", p
                    )
                _check_str(k, p, "dict key")
                spend(_json_string_len(k) + 1 + (1 if comma else 0))
                stack.append(("v", child, d, f"{p}[{json.dumps(k, ensure_ascii=False)}]", False))
                continue
            _, item, d, p, comma = work
            if comma:
                spend(1)
            if isinstance(item, str):
                _check_str(item, p, "str")
                spend(_json_string_len(item))
            elif isinstance(item, dict):
                if d >= max_depth:
                    raise _Refused(limit, f"nested deeper than max_input_depth={max_depth}", p)
                spend(2)
                entries = [("e", k, v, d + 1, p, i > 0) for i, (k, v) in enumerate(item.items())]
                stack.extend(reversed(entries))
            elif isinstance(item, bool):
                spend(4 if item else 5)
            elif isinstance(item, int):
                spend(len(str(item)))
                if not -(2**63) <= item < 2**64:
                    try:
                        f = float(item)
                    except OverflowError:
                        raise _Refused(TypeError, "int too large for JSON numbers", p) from None
                    if not math.isfinite(f):
                        raise _Refused(TypeError, "int too large for JSON numbers", p)
            elif isinstance(item, float):
                if not math.isfinite(item):
                    raise _Refused(TypeError, "NaN and infinities are not JSON numbers", p)
                spend(len(repr(item)))
            elif item is None:
                spend(4)
            elif isinstance(item, (list, tuple)):
                if d >= max_depth:
                    raise _Refused(limit, f"nested deeper than max_input_depth={max_depth}", p)
                spend(2)
                children = [("v", c, d + 1, f"{p}[{i}]", i > 0) for i, c in enumerate(item)]
                stack.extend(reversed(children))
            else:
                raise _Refused(
                    TypeError,
                    f"{type(item).__name__} is not JSON-shaped "
                    "(expected dict, list, tuple, str, int, float, bool or None)",
                    p,
                )
    except _Refused as r:
        raise r.error() from None


def _encode(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _uds_transport(httpx: Any, path: str) -> Any:
    """An HTTP transport over the Unix socket ``path`` that closes its socket when the connect
    fails: httpcore's own leaves it open (a ``ResourceWarning``, and an fd until the collector
    runs) for a missing or refused socket, which is exactly when a client retries."""
    transport = httpx.HTTPTransport(uds=path)
    try:
        import socket

        httpcore = sys.modules[type(transport._pool).__module__.split(".")[0]]
        stream_type = sys.modules[f"{httpcore.__name__}._backends.sync"].SyncStream

        class ClosingBackend(httpcore.SyncBackend):  # type: ignore[misc, name-defined]
            def connect_unix_socket(
                self, path: str, timeout: float | None = None, socket_options: Any = None
            ) -> Any:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    for option in socket_options or ():
                        sock.setsockopt(*option)
                    sock.settimeout(timeout)
                    sock.connect(path)
                except TimeoutError as exc:
                    sock.close()
                    raise httpcore.ConnectTimeout(exc) from exc
                except OSError as exc:
                    sock.close()
                    raise httpcore.ConnectError(exc) from exc
                return stream_type(sock)

        transport._pool._network_backend = ClosingBackend()
    except (AttributeError, KeyError):  # another httpcore layout: keep its backend
        pass
    return transport


def _uds_path(opa_url: str) -> str | None:
    for prefix in ("unix://", "unix:"):
        if opa_url.startswith(prefix):
            return opa_url[len(prefix) :]
    return None


def _raise_for_compile(resp: Any, name: str) -> None:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    errors = body.get("errors") or [{}] if isinstance(body, dict) else [{}]
    first = errors[0] if isinstance(errors[0], dict) else {}
    loc = first.get("location") or {}
    message = first.get("message") or (body.get("message") if isinstance(body, dict) else None)
    raise PolicyCompileError(
        str(message or resp.text or f"HTTP {resp.status_code}"),
        policy=loc.get("file", name) if loc else name,
        line=loc.get("row"),
        column=loc.get("col"),
    )


def _error_message(resp: Any) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except ValueError:
        pass
    return f"HTTP {resp.status_code}: {resp.text[:500]}"


class PyPolicyEngine:
    """``PolicyEngine(backend="python", opa_url=...)``: see the module doc."""

    backend = "python"

    def __init__(
        self,
        opa_url: str,
        *,
        rego_v0: bool = False,
        time_limit: float | None = DEFAULT_TIME_LIMIT,
        max_input_depth: int = DEFAULT_MAX_INPUT_DEPTH,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        vm: bool = True,
        strict: bool = True,
        timeout: float = 5.0,
        token: str | None = None,
        decision_cache: Any = None,
    ) -> None:
        httpx = _httpx()

        if not isinstance(opa_url, str) or not opa_url:
            raise TypeError("opa_url must be a non-empty str such as 'http://127.0.0.1:8181'")
        self.time_limit = check_settings(
            rego_v0=rego_v0,
            time_limit=time_limit,
            max_input_depth=max_input_depth,
            max_input_bytes=max_input_bytes,
            vm=vm,
            strict=strict,
            decision_cache=decision_cache,
        )
        self.opa_url = opa_url
        self.rego_v0 = rego_v0
        self.max_input_depth = max_input_depth
        self.max_input_bytes = max_input_bytes
        self.strict = strict
        self.timeout = _seconds(timeout, "timeout") or 5.0
        self.decision_cache = decision_cache
        self.fallback = None
        self.fallback_available = False
        self.vm_refusal = "the HTTP path does not use the native VM"
        uds = _uds_path(opa_url)
        self._base_url = "http://policyd" if uds is not None else opa_url.rstrip("/")
        self._uds = uds
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=self._base_url,
            transport=_uds_transport(httpx, uds) if uds is not None else None,
            timeout=self.timeout,
            headers=self._headers,
        )
        self._httpx = httpx
        self._aclient: Any = None
        self._lock = threading.Lock()
        self._policies: dict[str, str] = {}
        self._data_digest = hashlib.sha256(b"{}").hexdigest()
        self._closed = False
        self._closing: object = None

    # --- state ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PolicyError("the PolicyEngine is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def policies(self) -> dict[str, str]:
        """``{name: version}`` of the policies this engine loaded."""
        with self._lock:
            return dict(sorted(self._policies.items()))

    @property
    def version(self) -> str:
        """SHA-256 over the policies' versions and the data this engine loaded."""
        h = hashlib.sha256()
        with self._lock:
            for name, version in sorted(self._policies.items()):
                h.update(name.encode() + b"\0" + version.encode() + b"\0")
            h.update(self._data_digest.encode())
        return h.hexdigest()

    def plan(self, path: str) -> str:
        check_path(path)
        return "http"

    def _adjust_policy_count(self, delta: int) -> None:
        with _metrics_lock:
            _metrics["policies"] += delta

    # --- writes ---------------------------------------------------------------------------------

    def load_policy(self, name: str, rego: str) -> str:
        """Adds or replaces a policy on the server; returns its version (SHA-256 of the source)."""
        self._check_open()
        check_policy_name(name)
        if not isinstance(rego, str):
            raise TypeError(f"rego must be a str, not {type(rego).__name__}")
        httpx = _httpx()

        try:
            resp = self._client.put(
                f"/v1/policies/{quote(name, safe='/')}",
                content=rego.encode("utf-8"),
                headers={"Content-Type": "text/plain"},
            )
        except httpx.HTTPError as exc:
            raise PolicyError(f"policy server at {self.opa_url} unreachable: {exc}") from exc
        if resp.status_code == 400:
            _raise_for_compile(resp, name)
        if resp.status_code >= 300:
            raise PolicyError(f"load_policy({name!r}) failed: {_error_message(resp)}")
        version = hashlib.sha256(rego.encode("utf-8")).hexdigest()
        with self._lock:
            new = name not in self._policies
            self._policies[name] = version
        if new:
            self._adjust_policy_count(1)
        return version

    def remove_policy(self, name: str) -> None:
        """Removes a policy (``PolicyNotFoundError`` when the server has none by that name)."""
        self._check_open()
        check_policy_name(name)
        httpx = _httpx()

        try:
            resp = self._client.delete(f"/v1/policies/{quote(name, safe='/')}")
        except httpx.HTTPError as exc:
            raise PolicyError(f"policy server at {self.opa_url} unreachable: {exc}") from exc
        if resp.status_code == 404:
            raise PolicyNotFoundError(f"no policy named {name!r}")
        if resp.status_code >= 300:
            raise PolicyError(f"remove_policy({name!r}) failed: {_error_message(resp)}")
        with self._lock:
            known = self._policies.pop(name, None) is not None
        if known:
            self._adjust_policy_count(-1)

    def set_data(self, data: Mapping[str, Any]) -> None:
        """Replaces the server's base document (``data``)."""
        self._check_open()
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, not {type(data).__name__}")
        validate(data, "data", MAX_DATA_DEPTH, 2**63, ValueError)
        body = _encode(data)
        httpx = _httpx()

        try:
            resp = self._client.put("/v1/data", content=body, headers=_JSON_HEADERS)
        except httpx.HTTPError as exc:
            raise PolicyError(f"policy server at {self.opa_url} unreachable: {exc}") from exc
        if resp.status_code >= 300:
            raise PolicyError(f"set_data failed: {_error_message(resp)}")
        with self._lock:
            self._data_digest = hashlib.sha256(body).hexdigest()

    # --- evaluation -----------------------------------------------------------------------------

    def _request(self, path: str, input: object, root: str) -> tuple[str, bytes, str | None]:
        check_path(path)
        if input is None:
            body = b"{}"
        else:
            try:
                validate(
                    input, root, self.max_input_depth, self.max_input_bytes, PolicyEvaluationError
                )
            except (TypeError, PolicyEvaluationError):
                _record(0.0, "input")
                raise
            body = b'{"input":' + _encode(input) + b"}"
        strict = "true" if self.strict else "false"
        url = "/v1/" + path.replace(".", "/") + f"?strict-builtin-errors={strict}"
        key = None
        if self.decision_cache is not None:
            key = f"{path}\0{self.version}\0{body.decode()}"
        return url, body, key

    def _result(self, resp: Any, default: object) -> object:
        if resp.status_code == 200:
            body = resp.json()
            return body["result"] if isinstance(body, dict) and "result" in body else default
        message = _error_message(resp)
        raise PolicyEvaluationError(message)

    def evaluate(self, path: str, input: object = None, *, default: object = None) -> object:
        """The value of ``path``, or ``default`` when it is undefined."""
        self._check_open()
        url, body, key = self._request(path, input, "input")
        hit = self._cached(key)
        if hit is not _MISSING:
            return default if hit is _UNDEFINED else hit
        with self._round_trip():
            resp = self._client.post(url, content=body, headers=_JSON_HEADERS)
            value = self._result(resp, _UNDEFINED)
        return self._decided(value, key, default)

    def evaluate_batch(
        self, path: str, inputs: Sequence[object], *, default: object = None
    ) -> list[object]:
        """``[evaluate(path, i, default=default) for i in inputs]`` over one pooled connection."""
        self._check_open()
        check_path(path)
        if isinstance(inputs, (str, bytes, bytearray, memoryview, Mapping)):
            raise TypeError(
                "inputs must be a sequence of inputs (a list or tuple), "
                f"not {type(inputs).__name__}"
            )
        try:
            items = list(inputs)
        except TypeError:
            raise TypeError(
                f"inputs must be a sequence of inputs, not {type(inputs).__name__}"
            ) from None
        for i, item in enumerate(items):
            if item is not None:
                self._request(path, item, f"inputs[{i}]")
        return [self.evaluate(path, item, default=default) for item in items]

    async def evaluate_async(
        self, path: str, input: object = None, *, default: object = None
    ) -> object:
        """``evaluate`` over the engine's async client (created on first use, on this loop)."""
        self._check_open()
        url, body, key = self._request(path, input, "input")
        hit = self._cached(key)
        if hit is not _MISSING:
            return default if hit is _UNDEFINED else hit
        if self._aclient is None:
            httpx = _httpx()
            self._aclient = httpx.AsyncClient(
                base_url=self._base_url,
                transport=(
                    httpx.AsyncHTTPTransport(uds=self._uds) if self._uds is not None else None
                ),
                timeout=self.timeout,
                headers=self._headers,
            )
        with self._round_trip():
            resp = await self._aclient.post(url, content=body, headers=_JSON_HEADERS)
            value = self._result(resp, _UNDEFINED)
        return self._decided(value, key, default)

    def _cached(self, key: str | None) -> object:
        """The decision cache's entry for ``key``, or ``_MISSING``."""
        if key is None:
            return _MISSING
        return self.decision_cache.get(key, _MISSING)

    @contextlib.contextmanager
    def _round_trip(self) -> Iterator[None]:
        """Times one decision request (metrics) and turns a transport failure into
        ``PolicyEvaluationError``; the body sends the request and reads its result."""
        httpx = _httpx()
        started = time.perf_counter()
        error: str | None = None
        try:
            yield
        except httpx.HTTPError as exc:
            error = "other"
            raise PolicyEvaluationError(
                f"policy server at {self.opa_url} unreachable: {exc}"
            ) from exc
        except PolicyEvaluationError:
            error = "evaluation"
            raise
        finally:
            _record(time.perf_counter() - started, error)

    def _decided(self, value: object, key: str | None, default: object) -> object:
        if key is not None:
            self.decision_cache.set(key, value)
        return default if value is _UNDEFINED else value

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the HTTP client(s); the engine refuses further calls."""
        if self._closed:
            return
        self._closed = True
        self._client.close()
        self._adjust_policy_count(-len(self._policies))
        if self._aclient is not None:
            # The async client's connections were made on an event loop: close them on the
            # running one (aclose() waits for that), or on a fresh loop when none runs.
            aclient, self._aclient = self._aclient, None
            import asyncio

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                with contextlib.suppress(Exception):
                    asyncio.run(aclient.aclose())
                return
            self._closing = loop.create_task(aclient.aclose())

    async def aclose(self) -> None:
        """Closes both clients."""
        aclient, self._aclient = self._aclient, None
        self.close()
        if aclient is not None:
            await aclient.aclose()

    def __enter__(self) -> PyPolicyEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> PyPolicyEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"PolicyEngine(backend='python', opa_url={self.opa_url!r}, "
            f"policies={sorted(self._policies)!r})"
        )


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_MISSING = _Sentinel("MISSING")
#: Stored in the decision cache for an undefined decision (the cache stores None as a value).
_UNDEFINED = _Sentinel("UNDEFINED")
_JSON_HEADERS = {"Content-Type": "application/json"}
