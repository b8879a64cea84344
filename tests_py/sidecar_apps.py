"""Handlers the sidecar tests run in real worker processes (``sidecar_apps:Echo`` and friends).

Workers import this module by name: the tests put ``tests_py`` on the workers' PYTHONPATH (the
supervisor propagates ``sys.path``, where pytest put it).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


class Boom(Exception):
    """A handler's own exception class: its name travels as the error type."""


class Echo:
    """Sync and async methods covering the behaviours under test."""

    def echo(self, params: Any) -> Any:
        return params

    async def aecho(self, params: Any) -> Any:
        return params

    def pid(self, params: Any) -> int:
        return os.getpid()

    def sleep(self, params: Any) -> Any:
        """Blocks its thread for ``params["seconds"]``, then returns ``params["value"]``."""
        time.sleep(float(params["seconds"]))
        return params.get("value")

    async def asleep(self, params: Any) -> Any:
        await asyncio.sleep(float(params["seconds"]))
        return params.get("value")

    def fail(self, params: Any) -> None:
        raise ValueError(str(params))

    async def afail(self, params: Any) -> None:
        raise Boom(f"async {params}")

    def system_exit(self, params: Any) -> None:
        raise SystemExit(3)

    def bad_result(self, params: Any) -> object:
        return object()

    def nan_result(self, params: Any) -> float:
        return float("nan")

    def big(self, params: Any) -> str:
        return "x" * int(params)

    def bigint(self, params: Any) -> int:
        return 2**200 + 1

    def hang(self, params: Any) -> None:
        """A sync handler stuck for good (its thread; the loop still answers pings)."""
        time.sleep(3600)

    async def freeze(self, params: Any) -> None:
        """Blocks the event loop itself: the worker answers nothing, not even pings."""
        time.sleep(3600)  # noqa: ASYNC251 - blocking the loop is the point

    def env(self, params: Any) -> Any:
        """An environment variable of the worker, and its working directory."""
        return {"value": os.environ.get(str(params)), "cwd": os.getcwd()}

    def exit(self, params: Any) -> None:
        """Dies without a goodbye (as a crash would)."""
        os._exit(int(params or 7))

    def _private(self, params: Any) -> str:
        return "never callable"

    not_a_method = 42


def _double(params: Any) -> Any:
    return params * 2


async def _atriple(params: Any) -> Any:
    return params * 3


async def _nap(params: Any) -> str:
    await asyncio.sleep(float(params))
    return "rested"


#: A dict handler.
HANDLERS = {"double": _double, "triple": _atriple, "nap": _nap}


def make_handlers() -> dict[str, Any]:
    """A factory: ``sidecar_apps:make_handlers`` is called with no arguments."""
    return {"double": _double, "source": lambda params: "factory"}


def once() -> Echo:
    """Starts once: a later start (a restart) fails, so the worker stays down.

    The marker file is ``$SIDECAR_TEST_MARKER``.
    """
    marker = os.environ["SIDECAR_TEST_MARKER"]
    if os.path.exists(marker):
        raise RuntimeError("this worker starts only once")
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    return Echo()


def slow_start() -> Echo:
    """Takes a long time to load (a model that never finishes loading)."""
    time.sleep(3600)
    return Echo()


class Broken:
    """Fails at construction: the worker never starts serving."""

    def __init__(self) -> None:
        raise RuntimeError("broken on purpose: no model file")
