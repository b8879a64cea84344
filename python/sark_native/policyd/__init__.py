"""policyd: the native policy engine as a server speaking OPA's REST API.

Run it with ``python -m sark_native.policyd --socket PATH | --bind HOST:PORT --policies DIR
[--data FILE]``; :func:`main` is the same entry point. It always runs on the Rust core (it has no
pure-Python twin) and ignores ``SARK_NATIVE_BACKEND``. See ``docs/policy.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import _backend

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sark_native.policyd",
        description="Serve Rego policies over OPA's REST API (POST /v1/data/..., "
        "PUT/DELETE/GET /v1/policies/..., PUT /v1/data, GET /health, GET /metrics).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="listen on this Unix socket (mode 0600)")
    where.add_argument("--bind", help="listen on HOST:PORT, e.g. 127.0.0.1:8181")
    p.add_argument("--policies", help="load the *.rego files under this directory and watch it")
    p.add_argument("--data", help="a JSON object loaded as data (and watched)")
    p.add_argument(
        "--token-sha256",
        help="SHA-256 (hex) of the bearer token that PUT/DELETE need; over TCP writes are "
        "refused without one",
    )
    p.add_argument("--watch-interval", type=float, default=1.0, help="seconds between scans")
    p.add_argument("--max-policy-bytes", type=int, default=1 << 20)
    p.add_argument("--max-data-bytes", type=int, default=8 << 20)
    p.add_argument("--max-input-depth", type=int, default=64)
    p.add_argument("--max-input-bytes", type=int, default=1 << 20)
    p.add_argument(
        "--time-limit", type=float, default=1.0, help="seconds per evaluation (0: no limit)"
    )
    p.add_argument("--shutdown-grace", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2, help="server threads")
    p.add_argument("--v0-compatible", action="store_true", help="parse policies as Rego v0")
    p.add_argument("--no-vm", action="store_true", help="never use the bytecode VM")
    p.add_argument(
        "--no-strict",
        action="store_true",
        help="built-in errors make expressions undefined (OPA's default) unless a request asks "
        "for strict-builtin-errors=true; by default they are errors",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    native = _backend.native_for_servers()
    try:
        native._policyd_serve(
            bind=args.bind,
            socket=args.socket,
            policies=args.policies,
            data=args.data,
            token_sha256=args.token_sha256,
            watch_interval=args.watch_interval,
            max_policy_bytes=args.max_policy_bytes,
            max_data_bytes=args.max_data_bytes,
            shutdown_grace=args.shutdown_grace,
            workers=args.workers,
            rego_v0=args.v0_compatible,
            time_limit=args.time_limit or None,
            max_input_depth=args.max_input_depth,
            max_input_bytes=args.max_input_bytes,
            vm=not args.no_vm,
            strict=not args.no_strict,
        )
    except KeyboardInterrupt:  # SIGINT: the server stopped gracefully before Python saw it
        return 0
    except (ValueError, OSError) as exc:
        print(f"policyd: {exc}", file=sys.stderr)
        return 2
    return 0
