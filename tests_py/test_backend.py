"""The package surface: version, backend switch, fallback when the extension is missing."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

import sark_native
from sark_native import _backend
from sark_native._backend import Backend
from sark_native.exceptions import BackendUnavailableError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != _backend.ENV_VAR}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def test_version_equals_the_crates() -> None:
    cargo = (ROOT / "Cargo.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', cargo, re.MULTILINE)
    assert match is not None
    assert sark_native.__version__ == match.group(1)
    if sark_native.RUST_AVAILABLE:
        assert _backend.native().__version__ == match.group(1)


def test_backend_info_says_which_backend_and_why() -> None:
    info = sark_native.backend_info()
    assert info["version"] == sark_native.__version__
    assert info["rust_available"] is sark_native.RUST_AVAILABLE
    cache = info["components"]["cache"]
    assert cache["backend"] == ("rust" if sark_native.RUST_AVAILABLE else "python")
    assert cache["reason"]
    if not sark_native.RUST_AVAILABLE:
        assert info["reason"]


@pytest.mark.parametrize("bad", ["Rust", "native", "", None, 1])
def test_unknown_backend_name_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="backend"):
        sark_native.Cache(backend=bad)  # type: ignore[arg-type]


def test_only_the_backend_module_imports_the_extension() -> None:
    offenders = []
    for path in (ROOT / "python" / "sark_native").rglob("*.py"):
        if path.name == "_backend.py":
            continue
        text = path.read_text()
        imports = re.search(
            r"^\s*(from\s+\S+\s+import\s+.*\b_native\b|import\s+\S*\b_native\b)"
            r"|import_module\([^)]*_native",
            text,
            re.MULTILINE,
        )
        if imports:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_env_var_forces_python_and_refuses_rust() -> None:
    proc = run_python(
        """
        import sark_native as sn
        from sark_native.exceptions import BackendUnavailableError
        assert sn.RUST_AVAILABLE is False
        assert sn.Cache().backend == "python"
        info = sn.backend_info()
        assert "SARK_NATIVE_BACKEND" in info["reason"], info
        assert info["components"]["cache"]["backend"] == "python"
        try:
            sn.Cache(backend="rust")
        except BackendUnavailableError as e:
            assert isinstance(e, RuntimeError)
            print("refused:", e)
        else:
            raise SystemExit("backend='rust' was accepted")
        """,
        SARK_NATIVE_BACKEND="python",
    )
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout


BROKEN_IMPORT = """
import importlib.abc, logging, sys
logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(name)s %(message)s")

class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sark_native._native":
            raise {exc}("simulated broken build")
        return None

sys.meta_path.insert(0, Broken())
import sark_native as sn
import sark_native.cache, sark_native.metrics  # a second import logs nothing more
assert sn.RUST_AVAILABLE is False
c = sn.Cache(max_size=2)
c.set("a", 1)
assert c.get("a") == 1 and c.backend == "python"
print("REASON", sn.backend_info()["reason"])
"""


@pytest.mark.parametrize("exc", ["ImportError", "RuntimeError", "OSError"])
def test_a_missing_or_broken_extension_falls_back_with_one_warning(exc: str) -> None:
    proc = run_python(BROKEN_IMPORT.format(exc=exc))
    assert proc.returncode == 0, proc.stderr
    assert "simulated broken build" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("LOG WARNING")]
    assert len(warnings) == 1, proc.stderr
    assert "pure-Python" in warnings[0]


def test_rust_backend_is_the_native_object_itself(backend: Backend) -> None:
    c = sark_native.Cache(backend=backend)
    if backend == "rust":
        assert type(c) is _backend.native().Cache
        assert type(c).__module__ == "sark_native._native"
    else:
        assert type(c).__name__ == "PyCache"
    assert isinstance(c, sark_native.Cache)


def test_backend_unavailable_error_names_the_reason() -> None:
    if sark_native.RUST_AVAILABLE:
        assert _backend.resolve("cache", "rust") == "rust"
    else:
        with pytest.raises(BackendUnavailableError, match="unavailable"):
            _backend.resolve("cache", "rust")
