"""The public ``PolicyEngine``: Rego decisions on regorus (native) or over OPA's REST API (HTTP).

``PolicyEngine(...)`` returns the backend's object itself, with no wrapper on the hot path: the
native ``sark_native._native.PolicyEngine`` or the pure-Python ``PyPolicyEngine``;
``isinstance(obj, PolicyEngine)`` holds for both. Semantics: ``docs/policy.md``.

* ``backend="rust"``: the native engine.
* ``backend="python"``: the HTTP client; needs ``opa_url`` (an OPA or ``policyd``).
* ``backend="auto"`` (default): native when the extension is loaded. With an ``opa_url`` the
  native engine gets the HTTP engine as its fallback: an internal failure of the native path is
  logged, counted (``opa_rust_fallback_total``) and retried there, and policy writes go to both.
  Without the extension, ``auto`` is the HTTP path (and needs ``opa_url``).
"""

from __future__ import annotations

from abc import ABCMeta
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import _backend
from ._backend import BackendChoice
from ._fallback.policy import (
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_INPUT_DEPTH,
    DEFAULT_TIME_LIMIT,
    PyPolicyEngine,
    check_settings,
)
from .exceptions import BackendUnavailableError

__all__ = ["PolicyEngine", "configure_policy_pool"]


class PolicyEngine(metaclass=ABCMeta):  # noqa: B024 - a virtual base: both backends register
    """A Rego policy engine with atomic hot reload (see the module doc)."""

    def __new__(
        cls,
        *,
        backend: BackendChoice = "auto",
        opa_url: str | None = None,
        rego_v0: bool = False,
        time_limit: float | None = DEFAULT_TIME_LIMIT,
        max_input_depth: int = DEFAULT_MAX_INPUT_DEPTH,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        vm: bool = True,
        strict: bool = True,
        timeout: float = 5.0,
        token: str | None = None,
        decision_cache: Any = None,
    ) -> PolicyEngine:
        if opa_url is not None and not isinstance(opa_url, str):
            raise TypeError(f"opa_url must be a str or None, not {type(opa_url).__name__}")
        chosen = _backend.resolve("policy", backend)
        if backend == "auto" and chosen == "python" and opa_url is None:
            raise BackendUnavailableError(
                "PolicyEngine: the Rust backend is unavailable "
                f"({_backend.UNAVAILABLE_REASON}); pass opa_url to use the HTTP path"
            )

        def http() -> PyPolicyEngine:
            assert opa_url is not None
            return PyPolicyEngine(
                opa_url,
                rego_v0=rego_v0,
                time_limit=time_limit,
                max_input_depth=max_input_depth,
                max_input_bytes=max_input_bytes,
                vm=vm,
                strict=strict,
                timeout=timeout,
                token=token,
                decision_cache=decision_cache,
            )

        if chosen == "python":
            if opa_url is None:
                raise ValueError("PolicyEngine(backend='python') needs opa_url (OPA or policyd)")
            return http()  # type: ignore[return-value]
        fallback = http() if backend == "auto" and opa_url is not None else None
        if fallback is None:  # else the HTTP engine has checked them
            check_settings(
                rego_v0=rego_v0,
                time_limit=time_limit,
                max_input_depth=max_input_depth,
                max_input_bytes=max_input_bytes,
                vm=vm,
                strict=strict,
                decision_cache=decision_cache,
            )
        native: PolicyEngine = _backend.native().PolicyEngine(
            rego_v0=rego_v0,
            time_limit=time_limit,
            max_input_depth=max_input_depth,
            max_input_bytes=max_input_bytes,
            vm=vm,
            strict=strict,
            fallback=fallback,
        )
        return native

    if TYPE_CHECKING:
        # The interface both backends implement (for type checkers; see _native.pyi).
        backend: str
        rego_v0: bool
        time_limit: float | None
        max_input_depth: int
        max_input_bytes: int
        strict: bool
        fallback: Any
        fallback_available: bool
        vm_refusal: str | None
        closed: bool

        @property
        def policies(self) -> dict[str, str]: ...
        @property
        def version(self) -> str: ...
        def load_policy(self, name: str, rego: str) -> str: ...
        def remove_policy(self, name: str) -> None: ...
        def set_data(self, data: Mapping[str, Any]) -> None: ...
        def evaluate(self, path: str, input: Any = None, *, default: Any = None) -> Any: ...
        def evaluate_batch(
            self, path: str, inputs: Sequence[Any], *, default: Any = None
        ) -> list[Any]: ...
        def evaluate_async(
            self, path: str, input: Any = None, *, default: Any = None
        ) -> Awaitable[Any]: ...
        def plan(self, path: str) -> str: ...
        def close(self) -> None: ...
        def aclose(self) -> Awaitable[None]: ...
        def __enter__(self) -> PolicyEngine: ...
        def __exit__(self, *exc: object) -> None: ...
        def __aenter__(self) -> Awaitable[PolicyEngine]: ...
        def __aexit__(self, *exc: object) -> Awaitable[None]: ...


PolicyEngine.register(PyPolicyEngine)
if _backend.RUST_AVAILABLE:
    PolicyEngine.register(_backend.native().PolicyEngine)


def configure_policy_pool(workers: int | None = None) -> int:
    """Sizes the native policy pool (the threads of ``evaluate_batch`` and ``evaluate_async``;
    default ``SARK_NATIVE_POLICY_WORKERS`` or the CPU count) and returns its size."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise TypeError(f"workers must be an int or None, not {type(workers).__name__}")
    if not _backend.RUST_AVAILABLE:
        return 0
    size: int = _backend.native()._configure_policy(workers)
    return size
