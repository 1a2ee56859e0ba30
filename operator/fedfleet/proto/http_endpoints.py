"""The HTTP port of a fedfleet server (the aggregator, the fleet gateway): `/metrics` (Prometheus text format),
`/healthz` and `/readyz`. On the proto floor, beside the gRPC guard, because both servers use it and they may
not import each other.

A few lines of asyncio rather than a web framework: three GET routes, no bodies, connection closed after
each answer. Requests are bounded in size and time so a slow or garbage client cannot hold the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: A read-only route below a prefix: the rest of the path in, (status, content type, body) out.
PrefixRoute = Callable[[str], tuple[int, str, bytes]]

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_SECONDS = 5.0


class HttpEndpoints:
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        prefix_routes: Mapping[str, PrefixRoute] | None = None,
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._prefix_routes = dict(prefix_routes or {})
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request; pure, so it is easy to test."""
        if method != "GET":
            return 405, "text/plain", b"only GET is supported\n"
        route = path.split("?", 1)[0]
        if route == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if route == "/healthz":
            return 200, "text/plain", b"ok\n"
        if route == "/readyz":
            if self._ready():
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", b"not ready\n"
        for prefix, handler in self._prefix_routes.items():
            if route.startswith(prefix):
                return handler(route[len(prefix) :])
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_SECONDS)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(parts) != 3:
                status, ctype, body = 400, "text/plain", b"bad request\n"
            else:
                status, ctype, body = self.respond(parts[0], parts[1])
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            503: "Service Unavailable",
        }
        writer.write(
            f"HTTP/1.1 {status} {reason.get(status, '')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
