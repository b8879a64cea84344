"""The echo worker of the sidecar benchmark (``sidecar_echo_app:Echo``): an async method, so the
figures measure the IPC path (frames, JSON, sockets), plus a sync one for the thread-pool hop."""

from __future__ import annotations

from typing import Any


class Echo:
    async def echo(self, params: Any) -> Any:
        return params

    def echo_sync(self, params: Any) -> Any:
        return params
