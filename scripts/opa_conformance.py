"""Runs OPA conformance cases (the YAML files of open-policy-agent/opa's ``test/cases/testdata``)
through ``sark_native.PolicyEngine`` and reports what agrees with OPA.

The cases are not part of this repository (they are OPA's); point the script at a copy:

    .venv/bin/pip install pyyaml
    .venv/bin/python scripts/opa_conformance.py /path/to/opa/v1/test/cases/testdata/v1 [--no-vm]
        [--http unix:///tmp/policyd.sock] [-v]

Only queries of the form ``data.<path> = x`` (almost all of them) are run: the engine evaluates
documents, not arbitrary queries. A case passes when the value (or undefined) matches
``want_result``, or when an expected error (``want_error``/``want_error_code``) is raised as
``PolicyCompileError`` (``rego_*`` codes) or ``PolicyEvaluationError`` (``eval_*`` codes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import re
import sys
from collections import Counter
from typing import Any

import sark_native
from sark_native import exceptions as ex

QUERY = re.compile(r"^\s*(data(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*=\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")


def canonical(value: Any, sort: bool) -> str:
    if sort and isinstance(value, list):
        return json.dumps(sorted(canonical(v, sort) for v in value))
    return json.dumps(value, sort_keys=True)


def run_case(case: dict[str, Any], make: Any) -> tuple[str, str]:
    """("pass" | "fail" | "skip", detail)."""
    m = QUERY.match(case.get("query", ""))
    if not m:
        return "skip", f"query form: {case.get('query')!r}"
    if "input_term" in case:
        return "skip", "input_term"
    path, var = m.group(1), m.group(2)
    want_error = case.get("want_error_code") or case.get("want_error")
    # OPA's default is non-strict built-in errors; cases ask for strict ones with strict_error.
    engine = make(strict=bool(case.get("strict_error")))
    for i in range(16):  # the HTTP path shares one server: remove the previous case's modules
        if engine.backend == "python":
            with contextlib.suppress(ex.PolicyNotFoundError):
                engine.remove_policy(f"mod{i}.rego")
    try:
        try:
            for i, module in enumerate(case.get("modules") or []):
                engine.load_policy(f"mod{i}.rego", module)
            engine.set_data(case.get("data") or {})
        except ex.PolicyCompileError as e:
            if want_error:
                return "pass", f"compile error as expected ({want_error})"
            return "fail", f"unexpected compile error: {str(e).splitlines()[0]}"
        kwargs = {"input": case["input"]} if "input" in case else {}
        undefined = object()
        try:
            got = engine.evaluate(path, default=undefined, **kwargs)
        except (ex.PolicyEvaluationError, ex.PolicyCompileError) as e:
            if want_error:
                return "pass", f"error as expected ({want_error})"
            return "fail", f"unexpected error: {str(e).splitlines()[0]}"
        if want_error:
            shown = "undefined" if got is undefined else repr(got)
            return "fail", f"expected error {want_error}, got {shown}"
        want = case.get("want_result")
        if want is None:
            return "skip", "no want_result"
        sort = bool(case.get("sort_bindings"))
        if not want:
            return ("pass", "") if got is undefined else ("fail", f"want undefined, got {got!r}")
        if got is undefined:
            return "fail", f"want {want[0].get(var)!r}, got undefined"
        if len(want) != 1 or var not in want[0]:
            return "skip", "want_result shape"
        ok = canonical(got, sort) == canonical(want[0][var], sort)
        return ("pass", "") if ok else ("fail", f"want {want[0][var]!r}, got {got!r}")
    finally:
        engine.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", type=pathlib.Path)
    p.add_argument("--no-vm", action="store_true", help="never use the bytecode VM")
    p.add_argument("--http", help="test the HTTP path against this opa_url instead")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    import yaml  # a dev dependency of this script only

    def make(strict: bool) -> Any:
        if args.http:
            return sark_native.PolicyEngine(backend="python", opa_url=args.http, strict=strict)
        return sark_native.PolicyEngine(backend="rust", vm=not args.no_vm, strict=strict)

    totals: Counter[str] = Counter()
    failures = []
    for f in sorted(args.cases.rglob("*.y*ml")):
        doc = yaml.safe_load(f.read_text())
        for case in doc.get("cases", []):
            outcome, detail = run_case(case, make)
            totals[outcome] += 1
            if outcome == "fail":
                failures.append((case.get("note"), detail))
            if args.verbose and outcome != "pass":
                print(f"{outcome:4} {case.get('note')}: {detail}")
    for note, detail in failures:
        print(f"FAIL {note}: {detail}")
    print(dict(totals))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
