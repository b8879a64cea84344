"""PolicyEngine's contract on both backends: the native engine and the HTTP path against a real
policyd. Decisions, documents, versions, compile errors, strict errors, bad input, batches,
awaitables and the lifecycle."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import sark_native
from sark_native import exceptions as ex
from sark_native._backend import Backend

AUTHZ = """package authz

default allow := false

allow if input.user.role == "admin"

allow if {
	not input.user.disabled
	data.roles[input.user.role].level >= data.sensitivity[input.resource.sensitivity].min_level
	input.resource.owner_team in input.user.teams
	input.context.hour >= 6
	input.context.hour < 22
}

reasons contains "disabled" if input.user.disabled

reasons contains "team" if not input.resource.owner_team in input.user.teams
"""

DATA = {
    "roles": {"admin": {"level": 100}, "developer": {"level": 30}, "viewer": {"level": 10}},
    "sensitivity": {
        "public": {"min_level": 0},
        "internal": {"min_level": 10},
        "secret": {"min_level": 50},
    },
}


def request(
    role: str, sensitivity: str, team: str, hour: int, disabled: bool = False
) -> dict[str, Any]:
    return {
        "user": {"id": "u1", "role": role, "teams": ["payments", "core"], "disabled": disabled},
        "resource": {"id": "r1", "sensitivity": sensitivity, "owner_team": team},
        "action": "invoke",
        "context": {"hour": hour, "ip": "10.0.0.1"},
    }


Make = Callable[..., Any]


@pytest.fixture
def make(backend: Backend, request: pytest.FixtureRequest) -> Iterator[Make]:
    """Builds engines on the test's backend (the HTTP path against the session's policyd, emptied
    first) with a 0.5 s time limit, and closes them at the end."""
    opened: list[Any] = []
    url = request.getfixturevalue("opa_url") if backend == "python" else None

    def build(**kwargs: Any) -> Any:
        kwargs.setdefault("time_limit", 0.5)
        if backend == "python":
            kwargs.setdefault("opa_url", url)
        engine = sark_native.PolicyEngine(backend=backend, **kwargs)
        opened.append(engine)
        return engine

    yield build
    for engine in opened:
        engine.close()


def test_authz_decisions(make: Make, backend: Backend) -> None:
    e = make()
    assert e.backend == backend
    version = e.load_policy("authz", AUTHZ)
    assert version == hashlib.sha256(AUTHZ.encode()).hexdigest()
    assert e.policies == {"authz": version}
    e.set_data(DATA)
    cases = [
        (("developer", "internal", "payments", 14), True),
        (("developer", "secret", "payments", 14), False),
        (("developer", "internal", "other", 14), False),
        (("developer", "internal", "payments", 23), False),
        (("viewer", "internal", "payments", 8), True),
        (("admin", "secret", "nobody", 3), True),
        (("stranger", "public", "payments", 12), False),
    ]
    for args, want in cases:
        assert e.evaluate("data.authz.allow", request(*args)) is want, args
    assert (
        e.evaluate("data.authz.allow", request("developer", "internal", "payments", 14, True))
        is False
    )
    assert e.evaluate("data.authz.reasons", request("developer", "internal", "x", 14, True)) == [
        "disabled",
        "team",
    ]


def test_undefined_gives_the_default(make: Make) -> None:
    e = make()
    e.load_policy("t", "package t\nx if input.a == 1\ndefault d := 7\n")
    assert e.evaluate("data.t.x", {"a": 2}) is None
    assert e.evaluate("data.t.x", {"a": 2}, default=False) is False
    assert e.evaluate("data.t.x") is None
    assert e.evaluate("data.t.x", {"a": 1}) is True
    assert e.evaluate("data.t.d", default="unused") == 7
    # Unknown rules and packages are undefined, never an error.
    assert e.evaluate("data.t.nope", default="dflt") == "dflt"
    assert e.evaluate("data.nope.x", default="dflt") == "dflt"
    # None as a default is returned as such.
    sentinel = object()
    assert e.evaluate("data.nope", default=sentinel) is sentinel


def test_documents_and_json_shapes(make: Make) -> None:
    e = make()
    e.load_policy(
        "t",
        'package t\nx := 1\ny contains 2\nz := {"a": {"b": 3}}\n'
        's := {"b", "a", 3, true, null, [1], {"k": 1}}\n'
        "f := 2.5\ng := 10 / 4\nh := 2.0\nbig := 12345678901234567890\nneg := -7\n",
    )
    e.set_data({"roles": {"a": 1}, "list": [1, "two", None]})
    assert e.evaluate("data.t.z") == {"a": {"b": 3}}
    assert e.evaluate("data.t.z.a") == {"b": 3}
    assert e.evaluate("data.t.z.nope") is None
    assert e.evaluate("data.roles") == {"a": 1}
    assert e.evaluate("data.list") == [1, "two", None]
    # Sets come back as lists in OPA's order: null, booleans, numbers, strings, arrays, objects.
    assert e.evaluate("data.t.s") == [None, True, 3, "a", "b", [1], {"k": 1}]
    assert e.evaluate("data.t.y") == [2]
    for path, want in [("data.t.f", 2.5), ("data.t.g", 2.5), ("data.t.big", 12345678901234567890)]:
        got = e.evaluate(path)
        assert got == want, path
        assert type(got) is type(want), (path, got)
    assert e.evaluate("data.t.neg") == -7
    h = e.evaluate("data.t.h")
    assert h == 2
    pkg = e.evaluate("data.t")
    assert pkg["x"] == 1
    assert pkg["y"] == [2]
    assert pkg["z"] == {"a": {"b": 3}}
    assert e.evaluate("data")["roles"] == {"a": 1}


if sark_native.RUST_AVAILABLE:  # parity needs both paths in one process

    def test_native_and_http_agree(opa_url: str) -> None:
        """The same documents come back as the same Python values, types included."""
        rego = (
            "package t\nv := [1, -1, 2.5, 1e300, 0.1, 18446744073709551615, "
            '-9223372036854775808, "é", "\\u0000", true, null, {"k": {"n": 1}}, {1, 2}]\n'
            "w := {x | some x in input.xs}\nu := input.u\n"
        )
        native = sark_native.PolicyEngine(backend="rust")
        http = sark_native.PolicyEngine(backend="python", opa_url=opa_url)
        try:
            for e in (native, http):
                e.load_policy("t", rego)
            inp = {
                "xs": [3.0, 2, 1.5, "a", [1], {"o": None}],
                "u": {"big": 2**70, "f": 0.30000000000000004, "i": 1 << 63, "z": -0.0},
            }
            for path in ("data.t.v", "data.t.w", "data.t.u", "data.t", "data"):
                a = native.evaluate(path, inp)
                b = http.evaluate(path, inp)
                assert repr(a) == repr(b), path
        finally:
            native.close()
            http.close()


def test_compile_errors_change_nothing(make: Make) -> None:
    e = make()
    e.load_policy("p", "package p\nx := 1\n")
    before = e.version
    with pytest.raises(ex.PolicyCompileError) as info:
        e.load_policy("p", "package p\n\nx := \n")
    err = info.value
    assert isinstance(err, ValueError)
    assert err.policy == "p"
    assert (err.line, err.column) == (4, 1), str(err)
    assert "expecting expression" in str(err)
    assert e.version == before
    assert e.policies == {"p": hashlib.sha256(b"package p\nx := 1\n").hexdigest()}
    assert e.evaluate("data.p.x") == 1
    with pytest.raises(ex.PolicyCompileError):
        e.load_policy("q", "package q\nx if y\n")  # y is not defined (unsafe)
    with pytest.raises(ex.PolicyCompileError):
        e.load_policy("q", "package q\nallow { true }\n")  # v0 syntax under v1
    with pytest.raises(ex.PolicyCompileError):
        e.load_policy("q", "not rego at all")
    assert list(e.policies) == ["p"]
    assert e.evaluate("data.p.x") == 1


def test_remove_and_versions(make: Make) -> None:
    e = make()
    empty = e.version
    v1 = e.load_policy("a", "package a\nx := 1\n")
    assert e.load_policy("a", "package a\nx := 1\n") == v1
    after_a = e.version
    assert after_a != empty
    e.load_policy("b", "package b\ny := 2\n")
    assert list(e.policies) == ["a", "b"]
    e.remove_policy("a")
    assert e.evaluate("data.a.x") is None
    with pytest.raises(ex.PolicyNotFoundError) as info:
        e.remove_policy("a")
    assert isinstance(info.value, LookupError)
    assert e.evaluate("data.b.y") == 2
    e.set_data({"k": 1})
    assert e.version not in (empty, after_a)


def test_strict_errors_and_conflicts(make: Make) -> None:
    e = make()
    e.load_policy(
        "t",
        """package t
div := 1 / input.z
typed := 1 + input.s
re if regex.match("[", "a")
conflict := 1 if true
conflict := 2 if true
obj[k] := v if { some k, v in {"a": 1} }
obj[k] := v if { some k, v in {"a": 2} }
deny if not startswith(input.path, "/public")
fine := 1
""",
    )
    inp = {"z": 0, "s": "a", "path": 5}
    for rule in ("div", "typed", "re", "conflict", "obj", "deny"):
        with pytest.raises(ex.PolicyEvaluationError):
            e.evaluate(f"data.t.{rule}", inp)
    # The engine stays usable.
    assert e.evaluate("data.t.fine", inp) == 1


def test_runaway_policies_stop_at_the_time_limit(make: Make) -> None:
    e = make()
    # Steps are checked against the budget (a single built-in call is not interrupted: see
    # docs/policy.md), so: nine million steps of a nested loop.
    e.load_policy(
        "t",
        "package t\nr := numbers.range(1, 3000)\n"
        "x := count([[a, b] | some a in r; some b in r])\ny := 1\n",
    )
    with pytest.raises(ex.PolicyEvaluationError):
        e.evaluate("data.t.x")
    assert e.evaluate("data.t.y") == 1


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (Opaque(), "input: Opaque is not JSON-shaped"),
        ({"a": b"bytes"}, 'input["a"]: bytes is not JSON-shaped'),
        ({"a": [1, {2}]}, 'input["a"][1]: set is not JSON-shaped'),
        ({"a": {1: 2}}, 'input["a"]: dict key 1 of type int is not a str'),
        ({"a": math.nan}, 'input["a"]: NaN and infinities are not JSON numbers'),
        ([math.inf], "input[0]: NaN and infinities are not JSON numbers"),
        ({"a": "\ud800"}, 'input["a"]: str with a lone surrogate'),
        ({"\ud800": 1}, "input: dict key with a lone surrogate"),
        ({"n": 10**400}, 'input["n"]: int too large for JSON numbers'),
        ({"a": 1j}, 'input["a"]: complex is not JSON-shaped'),
        ({'q"k': object()}, 'input["q\\"k"]: object is not JSON-shaped'),
    ],
)
def test_inputs_that_are_not_json_shaped(make: Make, value: object, where: str) -> None:
    e = make()
    e.load_policy("t", "package t\nx := input\n")
    with pytest.raises(TypeError) as info:
        e.evaluate("data.t.x", value)
    assert str(info.value).startswith(where), str(info.value)
    assert e.evaluate("data.t.x", {"ok": [1, 2.5, None, True, "s", (3, 4)]}) == {
        "ok": [1, 2.5, None, True, "s", [3, 4]]
    }


def test_input_limits(make: Make, backend: Backend) -> None:
    e = make(max_input_depth=3, max_input_bytes=200)
    assert e.max_input_depth == 3
    assert e.max_input_bytes == 200
    e.load_policy("t", "package t\nx := input\n")
    assert e.evaluate("data.t.x", {"a": {"b": [1]}}) == {"a": {"b": [1]}}
    with pytest.raises(ex.PolicyEvaluationError) as deep:
        e.evaluate("data.t.x", {"a": {"b": [[1]]}})
    assert str(deep.value) == 'input["a"]["b"][0]: nested deeper than max_input_depth=3'
    with pytest.raises(ex.PolicyEvaluationError) as big:
        e.evaluate("data.t.x", {"a": "x" * 300})
    assert str(big.value) == "input larger than max_input_bytes=200 (as compact JSON)"
    # Nesting far beyond the limit is an error, never a stack overflow.
    deep_list: list[Any] = []
    for _ in range(100_000):
        deep_list = [deep_list]
    with pytest.raises(ex.PolicyEvaluationError):
        e.evaluate("data.t.x", deep_list)
    assert e.evaluate("data.t.x", [1]) == [1]


def test_the_size_limit_is_the_compact_json_length(make: Make) -> None:
    """At exactly the JSON length an input passes; one byte less it is refused (both paths count
    the same bytes, floats as Python's repr)."""
    rng = random.Random(7)
    samples: list[Any] = [
        {"f": [rng.uniform(-1e20, 1e20) for _ in range(5)]},
        {"g": [1e-7, 2.0, -0.0, 1e16, 123456789.125, 5e-324, 1.7976931348623157e308]},
        {"s": 'é\n\t"\\\u0001ü€𝄞', "n": [-(2**63), 2**64 - 1, 0, True, False, None]},
        [{"k": i, "v": str(i) * i} for i in range(12)],
        {"nested": {"a": [[], {}, [{}]], "b": ()}},
    ]
    for sample in samples:
        size = len(json.dumps(sample, separators=(",", ":"), ensure_ascii=False).encode())
        ok = make(max_input_bytes=size)
        ok.load_policy("t", "package t\nx := 1\n")
        assert ok.evaluate("data.t.x", sample) == 1, sample
        tight = make(max_input_bytes=size - 1)
        tight.load_policy("t", "package t\nx := 1\n")
        with pytest.raises(ex.PolicyEvaluationError):
            tight.evaluate("data.t.x", sample)


def test_bad_arguments(make: Make) -> None:
    e = make()
    e.load_policy("t", "package t\nx := 1\n")
    for path in ["", "data.", "input.x", "data..a", "data.1a", "data.a-b", "data.a[0]", "Data.a"]:
        with pytest.raises(ValueError, match="path must be"):
            e.evaluate(path)
    with pytest.raises(TypeError):
        e.evaluate(b"data.t.x")
    for name in ["", "a b", "x" * 257, "semi;colon", "é"]:
        with pytest.raises(ValueError, match="policy name"):
            e.load_policy(name, "package t")
    with pytest.raises(TypeError):
        e.load_policy(1, "package t")
    with pytest.raises(TypeError):
        e.load_policy("t", b"package t")
    with pytest.raises(TypeError):
        e.set_data([1, 2])
    with pytest.raises(TypeError):
        e.set_data({"a": math.nan})
    with pytest.raises(TypeError):
        e.set_data({"a": {3: 4}})
    with pytest.raises(ValueError, match="policy name"):
        e.remove_policy("bad name")
    assert e.evaluate("data.t.x") == 1
    for inputs in (b"ab", bytearray(b"ab"), memoryview(b"ab"), "ab", {"a": 1}):
        with pytest.raises(TypeError, match="inputs must be a sequence of inputs"):
            e.evaluate_batch("data.t.x", inputs)
    settings: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"max_input_depth": 0}, ValueError, "max_input_depth must be between 1 and"),
        ({"max_input_depth": -1}, ValueError, "max_input_depth must be between 1 and"),
        ({"max_input_bytes": 2**70}, ValueError, "max_input_bytes must be between 1 and"),
        ({"max_input_bytes": "1"}, TypeError, "max_input_bytes must be an int, not str"),
        ({"max_input_depth": True}, TypeError, "max_input_depth must be an int, not bool"),
        ({"time_limit": True}, TypeError, "time_limit must be a number"),
        ({"strict": "yes"}, TypeError, "strict must be a bool, not str"),
        ({"rego_v0": 1}, TypeError, "rego_v0 must be a bool, not int"),
        ({"vm": None}, TypeError, "vm must be a bool, not NoneType"),
        ({"decision_cache": object()}, TypeError, "decision_cache must be a sark_native.Cache"),
    ]
    for kwargs, kind, message in settings:
        with pytest.raises(kind, match=message):
            make(**kwargs)
    assert e.evaluate_batch("data.t.x", ({"a": 1}, None)) == [1, 1]
    with pytest.raises(ValueError, match="time_limit"):
        make(time_limit=-1)
    with pytest.raises(ValueError, match="time_limit"):
        make(time_limit=math.nan)


def test_set_data_replaces_the_document(make: Make) -> None:
    e = make()
    e.load_policy("t", "package t\nlevel := data.roles[input.r]\n")
    e.set_data({"roles": {"a": 1}})
    assert e.evaluate("data.t.level", {"r": "a"}) == 1
    e.set_data({"roles": {"b": 2}})
    assert e.evaluate("data.t.level", {"r": "a"}) is None
    assert e.evaluate("data.t.level", {"r": "b"}) == 2


def test_evaluate_batch(make: Make) -> None:
    e = make()
    e.load_policy("authz", AUTHZ)
    e.set_data(DATA)
    inputs = [
        request(r, s, t, h)
        for r in ("developer", "viewer", "x")
        for s in ("internal", "secret")
        for t in ("payments", "zz")
        for h in (3, 12)
    ]
    single = [e.evaluate("data.authz.allow", i) for i in inputs]
    assert e.evaluate_batch("data.authz.allow", inputs) == single
    assert e.evaluate_batch("data.authz.allow", tuple(inputs)) == single
    assert e.evaluate_batch("data.authz.nope", inputs[:3], default="d") == ["d"] * 3
    assert e.evaluate_batch("data.authz.allow", []) == []
    with pytest.raises(TypeError, match=r"^inputs\[2\]: set is not JSON-shaped"):
        e.evaluate_batch("data.authz.allow", [{}, {}, {1}])
    with pytest.raises(TypeError):
        e.evaluate_batch("data.authz.allow", "not a list")
    with pytest.raises(TypeError):
        e.evaluate_batch("data.authz.allow", {"a": 1})
    with pytest.raises(ValueError, match="path must be"):
        e.evaluate_batch("bad path", inputs)
    e.load_policy("t", "package t\nx := 1 / input.z\n")
    with pytest.raises(ex.PolicyEvaluationError):
        e.evaluate_batch("data.t.x", [{"z": 1}, {"z": 0}])


@pytest.mark.asyncio
async def test_evaluate_async(make: Make) -> None:
    e = make()
    e.load_policy("authz", AUTHZ)
    e.set_data(DATA)
    inputs = [request("developer", "internal", t, h) for t in ("payments", "zz") for h in range(24)]
    want = [e.evaluate("data.authz.allow", i) for i in inputs]
    got = await asyncio.gather(*(e.evaluate_async("data.authz.allow", i) for i in inputs))
    assert list(got) == want
    assert await e.evaluate_async("data.nope", default=3) == 3
    e.load_policy("t", "package t\nx := 1 / input.z\n")
    with pytest.raises(ex.PolicyEvaluationError):
        await e.evaluate_async("data.t.x", {"z": 0})
    with pytest.raises(TypeError):
        await e.evaluate_async("data.t.x", {"z": object()})
    await e.aclose()


def test_evaluate_async_needs_a_running_loop(make: Make) -> None:
    e = make()

    async def run() -> Any:
        return await e.evaluate_async("data.x")

    assert asyncio.run(run()) is None


def test_close_and_context_managers(
    make: Make, backend: Backend, request: pytest.FixtureRequest
) -> None:
    e = make()
    e.load_policy("t", "package t\nx := 1\n")
    with e as same:
        assert same is e
        assert e.evaluate("data.t.x") == 1
    assert e.closed
    calls: list[Callable[[], object]] = [
        lambda: e.evaluate("data.t.x"),
        lambda: e.load_policy("t", "package t"),
        lambda: e.set_data({}),
        lambda: e.remove_policy("t"),
    ]
    for call in calls:
        with pytest.raises(ex.PolicyError, match="closed"):
            call()
    e.close()  # idempotent

    async def scoped() -> Any:
        async with make() as a:
            a.load_policy("u", "package u\ny := 2\n")
            return await a.evaluate_async("data.u.y")

    assert asyncio.run(scoped()) == 2


def test_rego_v0_by_option(backend: Backend, tmp_path: Any) -> None:
    if backend == "rust":
        e = sark_native.PolicyEngine(backend="rust", rego_v0=True)
        server = None
    else:
        from conftest import Policyd

        server = Policyd(tmp_path, "--v0-compatible")
        server.start()
        e = sark_native.PolicyEngine(backend="python", opa_url=server.url, rego_v0=True)
    try:
        assert e.rego_v0
        e.load_policy("old", "package old\nallow { input.x == 1 }\n")
        assert e.evaluate("data.old.allow", {"x": 1}) is True
    finally:
        e.close()
        if server is not None:
            assert server.stop() == 0


def test_backend_choice(opa_url: str) -> None:
    with pytest.raises(ValueError, match="opa_url"):
        sark_native.PolicyEngine(backend="python")
    with pytest.raises(ValueError, match="backend"):
        sark_native.PolicyEngine(backend="go")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sark_native.PolicyEngine(backend="python", opa_url=8181)  # type: ignore[arg-type]
    http = sark_native.PolicyEngine(backend="python", opa_url=opa_url)
    assert isinstance(http, sark_native.PolicyEngine)
    assert http.plan("data.x") == "http"
    http.close()
    if sark_native.RUST_AVAILABLE:
        e = sark_native.PolicyEngine()
        assert e.backend == "rust"
        assert e.fallback is None
        assert isinstance(e, sark_native.PolicyEngine)
        e.close()
    else:
        with pytest.raises(ex.BackendUnavailableError, match="opa_url"):
            sark_native.PolicyEngine()
        auto = sark_native.PolicyEngine(opa_url=opa_url)
        assert auto.backend == "python"
        auto.close()
