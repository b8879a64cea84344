"""Process lifecycle of the hash pool: lazy start, SARK_NATIVE_HASH_WORKERS, a forked child can
hash, and the interpreter exits cleanly with work still queued."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from sark_native._backend import Backend


def run_python(
    code: str, backend: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code).replace("BACKEND", repr(backend))],
        capture_output=True,
        text=True,
        env=dict(os.environ) | (env or {}),
        timeout=60,
        check=False,
    )


FORK = """
import os, sys, asyncio
import sark_native
from sark_native import _backend

h = sark_native.PasswordHasher(time_cost=1, memory_cost=256, backend=BACKEND)
phc = h.hash("parent")  # the parent's pool is running now
pid = os.fork()
if pid == 0:
    try:
        assert h.verify(phc, "parent")
        child = h.hash("child")
        assert h.verify(child, "child")
        async def check():
            return await h.verify_async(child, "child")
        assert asyncio.run(check())
    except BaseException as exc:
        print("child failed:", repr(exc), file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert h.verify(h.hash("parent again"), "parent again")
print("ok")
"""


def test_a_forked_child_can_hash(backend: Backend) -> None:
    r = run_python(FORK, backend)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


LAZY = """
import sark_native
from sark_native import _backend
if BACKEND == "rust":
    native = _backend.native()
    assert not native._hash_pool_running(), "the pool must not start at import"
    h = sark_native.PasswordHasher(time_cost=1, memory_cost=64, backend=BACKEND)
    assert not native._hash_pool_running(), "nor at construction"
    h.hash("pw")
    assert native._hash_pool_running()
    print(native._hashing_metrics()["workers"])
else:
    from sark_native._fallback import hashing
    h = sark_native.PasswordHasher(time_cost=1, memory_cost=64, backend=BACKEND)
    h.hash("pw")
    print(hashing.hashing_metrics()["workers"])
"""


def test_the_pool_starts_lazily_with_the_configured_size(backend: Backend) -> None:
    r = run_python(LAZY, backend, {"SARK_NATIVE_HASH_WORKERS": "3"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"
    r = run_python(LAZY, backend, {"SARK_NATIVE_HASH_WORKERS": "nonsense"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(max(min(os.cpu_count() or 1, 4), 1))


EXIT = """
import asyncio, threading
import sark_native
h = sark_native.PasswordHasher(time_cost=2, memory_cost=4096, backend=BACKEND)

async def main():
    # Leave awaitables unawaited: the loop closes, the workers still finish and resolve nothing.
    for i in range(6):
        h.hash_async(f"pw{i}")
    await asyncio.sleep(0)

asyncio.run(main())

def late():
    # Racing the exit: queued before the pool shuts down (then drained), or refused after it.
    try:
        h.hash("from a thread")
    except sark_native.exceptions.OverloadedError:
        pass

threading.Thread(target=late, daemon=True).start()
print("exiting")
"""


def test_the_interpreter_exits_cleanly_with_work_queued(backend: Backend) -> None:
    r = run_python(EXIT, backend)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "exiting"
    assert "panick" not in r.stderr
    assert "Traceback" not in r.stderr


FORK_WHILE_BUSY = """
import os, sys, threading
import sark_native

h = sark_native.PasswordHasher(time_cost=1, memory_cost=64, backend=BACKEND)
stop = threading.Event()

def busy():
    while not stop.is_set():
        h.verify(h.hash("bg"), "bg")

threads = [threading.Thread(target=busy) for _ in range(3)]
for t in threads:
    t.start()
for _ in range(10):
    pid = os.fork()
    if pid == 0:
        ok = h.verify(h.hash("child"), "child")
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
stop.set()
for t in threads:
    t.join()
print("ok")
"""


def test_fork_while_other_threads_hash(backend: Backend) -> None:
    r = run_python(FORK_WHILE_BUSY, backend)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
