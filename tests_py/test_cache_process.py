"""Process lifecycle: the sweeper thread starts lazily, stops when the caches are gone, is paused
around fork() and rebuilt in the child, and the interpreter exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import sark_native
from sark_native._backend import Backend


def run_python(code: str, backend: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code).replace("BACKEND", repr(backend))],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


LIFECYCLE = """
import gc, threading, time
import sark_native
from sark_native import _backend
from sark_native._fallback import cache as py_cache

def running():
    if BACKEND == "rust":
        return _backend.native()._sweeper_running()
    return py_cache._sweeper.running

def wait_for(cond, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False

c = sark_native.Cache(max_size=100, ttl=None, backend=BACKEND)
c.set("forever", 1)
assert not running(), "no deadline yet: the sweeper must not start"
c.set("brief", 2, ttl=0.1)
assert wait_for(running), "the sweeper did not start"
assert wait_for(lambda: len(c) == 1), "the sweeper did not reclaim the expired entry"
assert c.stats()["expirations"] == 1
del c
gc.collect()
assert wait_for(lambda: not running()), "the sweeper outlived its caches"
# and it comes back for a new cache
c2 = sark_native.Cache(max_size=10, ttl=0.1, backend=BACKEND)
c2.set("x", 1)
assert wait_for(running)
assert wait_for(lambda: len(c2) == 0)
print("OK")
"""


def test_sweeper_starts_lazily_and_stops_with_its_caches(backend: Backend) -> None:
    proc = run_python(LIFECYCLE, backend)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"
    assert proc.stderr == ""


EXIT = """
import sark_native
caches = [sark_native.Cache(max_size=1000, ttl=0.05, backend=BACKEND) for _ in range(4)]
for c in caches:
    for i in range(1000):
        c.set(f"k{i}", object())
import time; time.sleep(0.2)
print("bye")
"""


def test_interpreter_exits_cleanly_with_live_caches_and_sweeper(backend: Backend) -> None:
    proc = run_python(EXIT, backend)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "bye"
    assert "panic" not in proc.stderr.lower()
    assert proc.stderr == ""


def test_cache_and_sweeper_work_in_a_forked_child(backend: Backend) -> None:
    c = sark_native.Cache(max_size=1000, ttl=60.0, backend=backend)
    for i in range(500):
        c.set(f"k{i}", i)
    c.set("brief", 0, ttl=0.05)  # the sweeper is running in the parent now
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: report through the exit code, never return into pytest
        code = 1
        try:
            assert c.get("k1") == 1
            c.set("child", "x", ttl=0.1)
            for i in range(1000, 1600):  # forces evictions
                c.set(f"k{i}", i)
            deadline = time.monotonic() + 10
            while "child" in c or c.stats()["size"] > 999:
                if time.monotonic() > deadline:
                    raise AssertionError("child sweeper did not run")
                time.sleep(0.05)
            assert len(c) <= 1000
            code = 0
        finally:
            os._exit(code)
    # Wait with a bound: a child deadlocked by the fork must fail the test, not hang it.
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent is unaffected
    assert c.get("k1") == 1
    assert len(c) in (500, 501)  # "brief" may have been swept already
