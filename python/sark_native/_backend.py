"""The backend switch: the one module that imports the native extension.

Everything else asks this module which backend a component uses. It decides once, at import:

* ``SARK_NATIVE_BACKEND=python`` forces every component onto the pure-Python path; an explicit
  ``backend="rust"`` then raises :class:`BackendUnavailableError`.
* A missing or broken extension never makes ``import sark_native`` fail: the package falls back
  to Python, logs why once at WARNING, and :func:`info` reports the reason.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import platform
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal

from .exceptions import BackendUnavailableError

__all__ = [
    "COMPONENTS",
    "ENV_VAR",
    "NATIVE_PENDING",
    "RUST_AVAILABLE",
    "Backend",
    "BackendChoice",
    "bucket_function",
    "info",
    "native",
    "native_for_servers",
    "resolve",
    "rollout_table",
]

logger = logging.getLogger("sark_native")

ENV_VAR = "SARK_NATIVE_BACKEND"
Backend = Literal["rust", "python"]
BackendChoice = Literal["auto", "rust", "python"]

#: Components that have a native and a pure-Python implementation.
COMPONENTS: tuple[str, ...] = ("cache", "bucket", "tokens", "hashing", "policy", "sidecar")

#: Components whose native implementation is not built yet, and what ``backend="rust"`` says:
#: ``auto`` picks Python for them. Delete the entry once the extension provides the component.
NATIVE_PENDING: dict[str, str] = {}

_forced = os.environ.get(ENV_VAR, "").strip().lower()
if _forced not in ("", "auto", "rust", "python"):
    logger.warning("%s=%r is not one of auto, rust, python; using auto", ENV_VAR, _forced)
    _forced = ""
FORCED_PYTHON = _forced == "python"


def _load_native() -> tuple[ModuleType | None, str | None]:
    if FORCED_PYTHON:
        return None, f"disabled by {ENV_VAR}=python"
    try:
        module = importlib.import_module("sark_native._native")
    except ImportError as exc:
        return None, f"extension not importable: {exc}"
    except Exception as exc:  # a broken build must not break `import sark_native`
        return None, f"extension failed to load: {type(exc).__name__}: {exc}"
    from . import _version

    built = getattr(module, "__version__", None)
    if built != _version.VERSION:
        return None, f"extension version {built!r} does not match the package ({_version.VERSION})"
    return module, None


_native, UNAVAILABLE_REASON = _load_native()
RUST_AVAILABLE: bool = _native is not None
if UNAVAILABLE_REASON is not None and not FORCED_PYTHON:
    logger.warning("sark_native: using the pure-Python path (%s)", UNAVAILABLE_REASON)


def native() -> ModuleType:
    """The native extension module, or :class:`BackendUnavailableError` saying why not."""
    if _native is None:
        raise BackendUnavailableError(f"the Rust backend is unavailable: {UNAVAILABLE_REASON}")
    return _native


def native_for_servers() -> ModuleType:
    """The extension for the servers (``policyd``): they always run on the native core and ignore
    ``SARK_NATIVE_BACKEND`` (it chooses between the backends of the facades, and a server has no
    pure-Python twin). Raises :class:`BackendUnavailableError` when it cannot be imported."""
    if _native is not None:
        return _native
    try:
        return importlib.import_module("sark_native._native")
    except Exception as exc:
        raise BackendUnavailableError(f"the Rust extension is not importable: {exc}") from exc


def resolve(component: str, backend: object) -> Backend:
    """Turn a component's ``backend=`` argument into the backend that will serve it."""
    if component in NATIVE_PENDING and backend in ("auto", "rust"):
        if backend == "rust":
            raise BackendUnavailableError(NATIVE_PENDING[component])
        return "python"
    if backend == "auto":
        return "rust" if RUST_AVAILABLE else "python"
    if backend == "python":
        return "python"
    if backend == "rust":
        native()  # raises with the reason when unavailable
        return "rust"
    raise ValueError(f"{component}: backend must be 'auto', 'rust' or 'python', not {backend!r}")


def bucket_function() -> Callable[[str, str], int]:
    """The rollout ``bucket`` function: native when the extension is loaded, else the ``mmh3``
    twin. Both give the same result on every input, so it takes no backend argument."""
    if _native is not None:
        native_bucket: Callable[[str, str], int] = _native.bucket
        return native_bucket
    from ._fallback.bucket import bucket

    return bucket


def rollout_table() -> Any:
    """A new ``RolloutTable`` (percentages and decision counters) for ``FeatureFlags``: the native
    one (counters in Rust atomics) when the extension is loaded, else its pure-Python twin."""
    if _native is not None:
        return _native.RolloutTable()
    from ._fallback.bucket import RolloutTable

    return RolloutTable()


def info() -> dict[str, Any]:
    """Which backend each component uses under ``backend="auto"``, and why."""
    from . import _version

    why = "Rust extension loaded" if RUST_AVAILABLE else f"pure-Python path: {UNAVAILABLE_REASON}"
    default: Backend = "rust" if RUST_AVAILABLE else "python"
    return {
        "version": _version.VERSION,
        "rust_available": RUST_AVAILABLE,
        "reason": UNAVAILABLE_REASON,
        "env": {ENV_VAR: os.environ.get(ENV_VAR)},
        "python": platform.python_version(),
        "components": {
            name: (
                {"backend": "python", "reason": NATIVE_PENDING[name]}
                if name in NATIVE_PENDING
                else {"backend": default, "reason": why}
            )
            for name in COMPONENTS
        },
    }


def _install_process_hooks() -> None:
    """Park native background threads (the cache sweeper, the hash pool) around fork(), and stop
    them at interpreter exit (the hash pool drains its queue first)."""
    if _native is None:
        return
    module = _native
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=module._before_fork,
            after_in_parent=module._after_fork_parent,
            after_in_child=module._after_fork_child,
        )
    # pyo3 panics if a native thread attaches during finalization: stop them first.
    atexit.register(module._shutdown)


_install_process_hooks()
