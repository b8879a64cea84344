"""Shared fixtures: the ``backend`` parameter that runs every contract test on both paths."""

from __future__ import annotations

import os
from typing import cast

import pytest

import sark_native
from sark_native import _backend
from sark_native._backend import Backend

# In the normal run a missing extension is a failure, not a reason to skip: CI must prove the
# Rust path. Only the run with SARK_NATIVE_BACKEND=python drops the "rust" parameter.
if not sark_native.RUST_AVAILABLE and os.environ.get(_backend.ENV_VAR) != "python":
    raise RuntimeError(
        "the Rust extension is not importable "
        f"({_backend.UNAVAILABLE_REASON}); build it with `make build`, "
        f"or run with {_backend.ENV_VAR}=python to test the pure-Python path only"
    )

BACKENDS = ["rust", "python"] if sark_native.RUST_AVAILABLE else ["python"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each test that takes this fixture runs once per available backend."""
    return cast(Backend, request.param)
