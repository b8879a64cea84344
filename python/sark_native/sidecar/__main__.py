"""The worker's command line: ``python -m sark_native.sidecar module:attr --socket PATH``.

``module:attr`` names the handler: a class (instantiated with no arguments), a function or
``functools.partial`` (a factory, called with no arguments; it may be async), or an object or dict
used as it is. Exit status: 0 after a graceful shutdown, 1 when the grace period ran out with
handler code still running or serving failed, 2 for bad arguments or an app that does not load.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from ._protocol import DEFAULT_MAX_FRAME, check_max_frame, check_positive, check_socket_path
from ._worker import (
    DEFAULT_BACKLOG,
    DEFAULT_GRACE_PERIOD,
    PARENT_ENV,
    Worker,
    load_app,
)

logger = logging.getLogger("sark_native.sidecar")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sark_native.sidecar",
        description="Serve a handler's methods on a Unix socket (the sark_native sidecar worker).",
    )
    p.add_argument(
        "app",
        help="module:attr of a handler object, a dict of callables, a class (instantiated with "
        "no arguments) or a factory function (called with no arguments)",
    )
    p.add_argument("--socket", required=True, help="path of the Unix socket to create (0600)")
    p.add_argument(
        "--max-frame", type=int, default=DEFAULT_MAX_FRAME, help="cap on a frame's body in bytes"
    )
    p.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG, help="listen backlog")
    p.add_argument("--threads", type=int, default=None, help="threads for sync methods")
    p.add_argument(
        "--grace-period",
        type=float,
        default=DEFAULT_GRACE_PERIOD,
        help="seconds in-flight requests may run after SIGTERM",
    )
    p.add_argument(
        "--watch-stdin",
        action="store_true",
        help="exit when stdin reaches EOF (the supervisor died); on Linux also ask for SIGTERM "
        "when the parent dies",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default INFO)",
    )
    return p


def die_with_parent() -> bool:
    """On Linux: SIGTERM this process when its parent dies (PR_SET_PDEATHSIG), and report whether
    the parent named by ``SARK_NATIVE_SIDECAR_PARENT`` is already gone (the race)."""
    expected = os.environ.pop(PARENT_ENV, "")
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    return expected.isdigit() and os.getppid() != int(expected)


async def _serve(args: argparse.Namespace) -> Worker | None:
    """Loads the app and serves it; None (after printing why) when the app does not load."""
    try:
        handler = load_app(args.app)
        if inspect.isawaitable(handler):
            handler = await handler
        worker = Worker(
            handler,
            args.socket,
            max_frame=args.max_frame,
            backlog=args.backlog,
            grace_period=args.grace_period,
            threads=args.threads,
        )
    except Exception as exc:
        traceback.print_exc()
        print(
            f"sark_native.sidecar: cannot load the app {args.app!r}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return None
    await worker.run(watch_stdin=args.watch_stdin)
    return worker


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s sidecar[%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        check_socket_path(args.socket)
        check_max_frame(args.max_frame)
        check_positive(args.grace_period, "--grace-period")
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.watch_stdin and die_with_parent():
        logger.warning("the supervisor is already gone; exiting")
        return 0
    try:
        worker = asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 1
    except Exception as exc:
        traceback.print_exc()
        print(f"sark_native.sidecar: cannot serve {args.app!r}: {exc}", file=sys.stderr)
        return 1
    if worker is None:
        return 2
    if worker.threads_stuck():
        # A sync handler is stuck past the grace period: its thread would block the interpreter's
        # exit (ThreadPoolExecutor joins its threads), so leave without waiting for it.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
