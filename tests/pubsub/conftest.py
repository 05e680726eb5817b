"""Fixtures for the end-to-end pub/sub tests: a certificate, configs, a server and clients.

The end-to-end tests run a real session server and clients over loopback UDP, or
over a ``FakeNetwork`` under ``autojump_clock`` where time matters; every test has a
``trio.fail_after`` deadline and never sleeps to wait for something.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio

import quicframe
from quicframe import ServerConfig


@contextlib.asynccontextmanager
async def serving(
    router: quicframe.Router, config: ServerConfig, **options: Any
) -> AsyncIterator[quicframe.Server]:
    """A session server on 127.0.0.1, stopped at once when the block ends."""
    async with trio.open_nursery() as nursery:
        server: quicframe.Server = await nursery.start(_serve, router, config, options)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def _serve(
    router: quicframe.Router,
    config: ServerConfig,
    options: dict[str, Any],
    *,
    task_status: trio.TaskStatus[quicframe.Server],
) -> None:
    await quicframe.serve(router, "127.0.0.1", 0, config, task_status=task_status, **options)
