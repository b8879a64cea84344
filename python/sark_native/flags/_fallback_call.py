"""The per-call fallback used by the components: a native failure is retried on the Python path.

Only internal failures of the native path are retried: a panic caught at the binding edge
(``pyo3_runtime.PanicException``), a ``RuntimeError``/``SystemError`` from a conversion or an
internal invariant. Bad input (``ValueError``, ``TypeError``) and domain answers (every
``SarkNativeError``: a policy's own evaluation error, a token or password that fails verification,
``CacheError``) are raised as they are, never retried. Each fallback is logged at WARNING with its
context and counted (metric ``rust_fallback_total{component,error_type}``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, ParamSpec, TypeVar

from ..exceptions import SarkNativeError

__all__ = ["WithFallback", "fallback_counts", "is_internal_failure", "with_fallback"]

logger = logging.getLogger("sark_native.fallback")

P = ParamSpec("P")
R = TypeVar("R")

#: (component, error type) -> fallbacks taken in this process; read by the metrics Collector.
_counts: dict[tuple[str, str], int] = {}
_counts_lock = threading.Lock()


def fallback_counts() -> dict[tuple[str, str], int]:
    """How many calls fell back to the Python path, by (component, error type)."""
    with _counts_lock:
        return dict(_counts)


def is_internal_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the native path itself (retry), not an answer (raise)."""
    kind = type(exc)
    if kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime":
        return True
    if isinstance(exc, (SarkNativeError, ValueError, TypeError)):
        return False
    return isinstance(exc, (RuntimeError, SystemError))


def _record(component: str, func: Callable[..., object], exc: BaseException) -> None:
    error_type = type(exc).__name__
    with _counts_lock:
        _counts[(component, error_type)] = _counts.get((component, error_type), 0) + 1
    logger.warning(
        "%s: native call %s failed (%s: %s); retrying on the Python path",
        component,
        getattr(func, "__qualname__", repr(func)),
        error_type,
        exc,
        exc_info=exc,
    )


class WithFallback(Generic[P, R]):
    """Calls ``rust(*args)``; on an internal failure logs, counts and returns ``python(*args)``."""

    def __init__(self, component: str, rust: Callable[P, R], python: Callable[P, R]) -> None:
        self.component = component
        self.rust = rust
        self.python = python
        functools.update_wrapper(self, rust)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return self.rust(*args, **kwargs)
        except BaseException as exc:
            if not is_internal_failure(exc):
                raise
            _record(self.component, self.rust, exc)
        return self.python(*args, **kwargs)


class AsyncWithFallback(Generic[P, R]):
    """The ``async`` form of :class:`WithFallback`: both paths are coroutine functions."""

    def __init__(
        self,
        component: str,
        rust: Callable[P, Awaitable[R]],
        python: Callable[P, Awaitable[R]],
    ) -> None:
        self.component = component
        self.rust = rust
        self.python = python
        functools.update_wrapper(self, rust)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await self.rust(*args, **kwargs)
        except BaseException as exc:
            if not is_internal_failure(exc):
                raise
            _record(self.component, self.rust, exc)
        return await self.python(*args, **kwargs)


def with_fallback(
    component: str, rust: Callable[P, R], python: Callable[P, R]
) -> WithFallback[P, R]:
    """``evaluate = with_fallback("policy", native.evaluate, opa.evaluate)``: see the module doc."""
    return WithFallback(component, rust, python)
