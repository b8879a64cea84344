"""The package version, read from the installed distribution (it equals the crate's)."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION: str = metadata.version("sark-native")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"
