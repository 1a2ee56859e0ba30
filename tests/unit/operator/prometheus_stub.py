"""A stand-in Prometheus for the operator's tests: a real HTTP server on 127.0.0.1 whose `/api/v1/query` a test
answers, so the client code under test speaks real HTTP to it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serving(handle: Handler) -> AsyncIterator[str]:
    """Serve `handle` as the query endpoint; yields the server's address (http://127.0.0.1:PORT)."""
    app = web.Application()
    app.router.add_post("/api/v1/query", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()  # the kernel picks a free port: no race with a probe
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
