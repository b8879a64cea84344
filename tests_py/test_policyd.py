"""policyd as a server: OPA's REST endpoints, authentication of writes, body caps, the watched
policy directory, graceful shutdown, metrics. Real processes on real sockets. policyd always runs
on the native core (also in the suite with SARK_NATIVE_BACKEND=python)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Policyd, ServerProcess, free_port

TOKEN = "s3cret-token"
TOKEN_SHA = hashlib.sha256(TOKEN.encode()).hexdigest()


class TcpPolicyd(ServerProcess):
    def __init__(self, directory: pathlib.Path, *extra: str) -> None:
        self.port = free_port()
        self.log = directory / "policyd-tcp.log"
        bind = f"127.0.0.1:{self.port}"
        self._spawn(
            [sys.executable, "-m", "sark_native.policyd", "--bind", bind, *extra],
            self.healthy,
            timeout=20,
        )

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/health")[0] == 200
        except OSError:
            return False

    def request(
        self, method: str, path: str, body: bytes | None = None, token: str | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[Policyd]:
    s = Policyd(tmp_path, "--time-limit", "5")
    s.start()
    yield s
    assert s.stop() == 0


def evaluate(s: Any, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    status, raw = s.request("POST", path, json.dumps(body or {}).encode())
    return status, json.loads(raw) if raw else None


def test_the_rest_api(server: Policyd) -> None:
    assert stat.S_IMODE(os.stat(server.socket).st_mode) == 0o600
    rego = b'package authz\nallow if input.user == "alice"\nboom := 1 / input.z\n'
    assert server.request("PUT", "/v1/policies/authz.rego", rego) == (200, b"{}")
    assert evaluate(server, "/v1/data/authz/allow", {"input": {"user": "alice"}}) == (
        200,
        {"result": True},
    )
    # Undefined: no "result" key.
    assert evaluate(server, "/v1/data/authz/allow", {"input": {"user": "bob"}}) == (200, {})
    assert evaluate(server, "/v1/data/authz/nope") == (200, {})
    # GET without input, the package document, the whole data document.
    assert server.request("GET", "/v1/data/authz/allow") == (200, b"{}")
    status, doc = evaluate(server, "/v1/data/authz", {"input": {"user": "alice", "z": 2}})
    assert doc["result"]["allow"] is True
    assert doc["result"]["boom"] == 0.5
    # Strict built-in errors: 500 internal_error; unless the request asks otherwise.
    status, err = evaluate(server, "/v1/data/authz/boom", {"input": {"z": 0}})
    assert status == 500
    assert err["code"] == "internal_error"
    assert "divide by zero" in err["message"]
    status, raw = server.request(
        "POST", "/v1/data/authz/boom?strict-builtin-errors=false", b'{"input": {"z": 0}}'
    )
    assert (status, json.loads(raw)) == (200, {})
    # Policies: list (with and without the slash), one, delete.
    for path in ("/v1/policies", "/v1/policies/"):
        status, raw = server.request("GET", path)
        assert status == 200
        assert [p["id"] for p in json.loads(raw)["result"]] == ["authz.rego"]
    status, raw = server.request("GET", "/v1/policies/authz.rego")
    assert json.loads(raw)["result"] == {"id": "authz.rego", "raw": rego.decode()}
    assert server.request("GET", "/v1/policies/none.rego")[0] == 404
    assert server.request("DELETE", "/v1/policies/authz.rego") == (200, b"{}")
    assert server.request("DELETE", "/v1/policies/authz.rego")[0] == 404
    # Data.
    assert server.request("PUT", "/v1/data", b'{"roles": {"a": 1}}')[0] == 204
    assert evaluate(server, "/v1/data/roles/a") == (200, {"result": 1})
    assert server.request("GET", "/health") == (200, b"{}")


def test_bad_requests(server: Policyd) -> None:
    status, raw = server.request("PUT", "/v1/policies/p.rego", b"package p\nx := \n")
    body = json.loads(raw)
    assert status == 400
    assert body["code"] == "invalid_parameter"
    assert body["errors"][0]["location"] == {"file": "p.rego", "row": 3, "col": 1}
    assert server.request("PUT", "/v1/policies/p.rego", b"\xff\xfe")[0] == 400
    assert server.request("PUT", "/v1/policies/bad%20name", b"package p")[0] == 400
    assert server.request("PUT", "/v1/data", b"[1, 2]")[0] == 400
    assert server.request("PUT", "/v1/data", b"{not json")[0] == 400
    assert server.request("POST", "/v1/data/x", b"{not json")[0] == 400
    assert server.request("POST", "/v1/data/x", b"[1]")[0] == 400
    assert server.request("POST", "/v1/data/x-y", b"{}")[0] == 400
    assert server.request("POST", "/v1/data/x", b'{"input": 1e999}')[0] == 400
    deep = '{"input": ' + "[" * 70 + "]" * 70 + "}"
    status, raw = server.request("POST", "/v1/data/x", deep.encode())
    assert status == 400
    assert b"max_input_depth" in raw
    assert server.request("GET", "/nope")[0] == 404
    assert server.request("DELETE", "/health")[0] == 405
    # Still serving.
    assert server.request("PUT", "/v1/policies/ok.rego", b"package ok\nx := 1\n")[0] == 200
    assert evaluate(server, "/v1/data/ok/x") == (200, {"result": 1})


def test_body_caps(tmp_path: pathlib.Path) -> None:
    s = Policyd(tmp_path, "--max-policy-bytes", "1000", "--max-data-bytes", "2000")
    s.start()
    try:
        big_policy = b"package p\n" + b"# pad\n" * 300
        assert s.request("PUT", "/v1/policies/p.rego", big_policy)[0] == 413
        big_data = json.dumps({"k": "x" * 3000}).encode()
        assert s.request("PUT", "/v1/data", big_data)[0] == 413
        assert s.request("PUT", "/v1/policies/p.rego", b"package p\nx := 1\n")[0] == 200
    finally:
        assert s.stop() == 0


def test_writes_over_tcp_need_a_token(tmp_path: pathlib.Path) -> None:
    open_server = TcpPolicyd(tmp_path)
    try:
        status, raw = open_server.request("PUT", "/v1/policies/p.rego", b"package p\nx := 1\n")
        assert status == 403
        assert b"token" in raw
        assert open_server.request("PUT", "/v1/data", b"{}")[0] == 403
        assert open_server.request("DELETE", "/v1/policies/p.rego")[0] == 403
        # Reads need nothing.
        assert open_server.request("POST", "/v1/data/p/x", b"{}") == (200, b"{}")
    finally:
        assert open_server.stop() == 0
    guarded = TcpPolicyd(tmp_path, "--token-sha256", TOKEN_SHA)
    try:
        put = ("PUT", "/v1/policies/p.rego", b"package p\nx := 1\n")
        assert guarded.request(*put)[0] == 401
        assert guarded.request(*put, token="wrong")[0] == 401
        assert guarded.request(*put, token=TOKEN)[0] == 200
        assert guarded.request("POST", "/v1/data/p/x", b"{}") == (200, b'{"result":1}')
        assert guarded.request("DELETE", "/v1/policies/p.rego", token=TOKEN)[0] == 200
    finally:
        assert guarded.stop() == 0


def test_the_http_path_sends_its_token(tmp_path: pathlib.Path) -> None:
    import sark_native

    s = TcpPolicyd(tmp_path, "--token-sha256", TOKEN_SHA)
    try:
        url = f"http://127.0.0.1:{s.port}"
        with sark_native.PolicyEngine(backend="python", opa_url=url, token=TOKEN) as e:
            e.load_policy("p", "package p\nx := 1\n")
            assert e.evaluate("data.p.x") == 1
        with sark_native.PolicyEngine(backend="python", opa_url=url) as anonymous:
            with pytest.raises(sark_native.exceptions.PolicyError, match="token"):
                anonymous.load_policy("q", "package q\n")
            assert anonymous.evaluate("data.p.x") == 1
    finally:
        assert s.stop() == 0


def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_policy_directory_is_watched(tmp_path: pathlib.Path) -> None:
    policies = tmp_path / "policies"
    (policies / "sub").mkdir(parents=True)
    (policies / "authz.rego").write_text('package authz\nallow if input.user == "alice"\n')
    (policies / "sub" / "extra.rego").write_text("package extra\nx := 1\n")
    (policies / "notes.txt").write_text("not a policy")
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"roles": ["a"]}))
    s = Policyd(
        tmp_path, "--policies", str(policies), "--data", str(data), "--watch-interval", "0.1"
    )
    s.start()
    try:
        _status, raw = s.request("GET", "/v1/policies")
        assert sorted(p["id"] for p in json.loads(raw)["result"]) == [
            "authz.rego",
            "sub/extra.rego",
        ]
        assert evaluate(s, "/v1/data/roles") == (200, {"result": ["a"]})
        # A change.
        (policies / "sub" / "extra.rego").write_text("package extra\nx := 2\n")
        wait_for(lambda: evaluate(s, "/v1/data/extra/x") == (200, {"result": 2}))
        # A change that does not compile: the previous policies keep serving.
        (policies / "authz.rego").write_text("package authz\nallow if {\n")
        time.sleep(0.6)
        assert evaluate(s, "/v1/data/authz/allow", {"input": {"user": "alice"}}) == (
            200,
            {"result": True},
        )
        assert b"reload rejected" in s.log.read_bytes()
        # Fixed: served.
        (policies / "authz.rego").write_text('package authz\nallow if input.user == "bob"\n')
        wait_for(
            lambda: (
                evaluate(s, "/v1/data/authz/allow", {"input": {"user": "bob"}})
                == (200, {"result": True})
            )
        )
        # Removed and added files, and the data file.
        (policies / "sub" / "extra.rego").unlink()
        (policies / "new.rego").write_text("package new\ny := 3\n")
        data.write_text(json.dumps({"roles": ["b"]}))
        wait_for(lambda: evaluate(s, "/v1/data/new/y") == (200, {"result": 3}))
        wait_for(lambda: evaluate(s, "/v1/data/extra/x") == (200, {}))
        wait_for(lambda: evaluate(s, "/v1/data/roles") == (200, {"result": ["b"]}))
    finally:
        assert s.stop() == 0


def test_a_bad_directory_fails_at_start(tmp_path: pathlib.Path) -> None:
    (tmp_path / "bad.rego").write_text("package bad\nx := \n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sark_native.policyd",
            "--socket",
            str(tmp_path / "s.sock"),
            "--policies",
            str(tmp_path),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert b"bad.rego:3:1" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "sark_native.policyd", "--bind", "nonsense"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert b"HOST:PORT" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "sark_native.policyd", "--bind", "127.0.0.1:1", "--socket", "x"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2  # argparse: mutually exclusive


def test_sigterm_lets_in_flight_requests_finish(tmp_path: pathlib.Path) -> None:
    s = Policyd(tmp_path, "--time-limit", "30")
    s.start()
    assert s.proc is not None
    # About a second of work per evaluation.
    slow = (
        b"package slow\nr := numbers.range(1, 1500)\nn := count([1 | some a in r; some b in r])\n"
    )
    assert s.request("PUT", "/v1/policies/slow.rego", slow)[0] == 200
    results: list[tuple[int, bytes]] = []
    t = threading.Thread(target=lambda: results.append(s.request("POST", "/v1/data/slow/n", b"{}")))
    t.start()
    time.sleep(0.3)  # the request is being evaluated
    s.proc.send_signal(signal.SIGTERM)
    t.join(timeout=60)
    assert results == [(200, b'{"result":2250000}')]
    assert s.proc.wait(timeout=30) == 0
    assert b"SIGTERM" in s.log.read_bytes()
    assert not s.socket.exists()
    s.proc = None


def test_metrics_endpoint(server: Policyd) -> None:
    server.request("PUT", "/v1/policies/m.rego", b"package m\nx := 1\ny := 1 / input.z\n")
    evaluate(server, "/v1/data/m/x")
    evaluate(server, "/v1/data/m/y", {"input": {"z": 0}})
    status, raw = server.request("GET", "/metrics")
    text = raw.decode()
    assert status == 200
    assert 'opa_evaluations_total{implementation="rust"} 2' in text
    assert 'opa_rust_errors_total{error_type="evaluation"} 1' in text
    assert 'opa_evaluation_duration_seconds_bucket{implementation="rust",le="+Inf"} 2' in text
    assert "rust_opa_policies_loaded 1" in text
    assert "process_resident_memory_bytes" in text
