"""A slow aggregator, made deterministically: a TCP proxy on 127.0.0.1 that holds every byte the server sends
for a fixed latency before passing it on. What the client sends goes through at once.

Every answer then takes at least `latency` seconds longer than the server needed, whatever the load of the
machine: a call whose deadline is shorter than that is certain to run out of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType


class SlowLink:
    """`with SlowLink(server_port, latency) as link:` clients connect to 127.0.0.1:`link.port`."""

    def __init__(self, server_port: int, latency: float) -> None:
        self.server_port = server_port
        self.latency = latency
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="slow-link", daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def __enter__(self) -> SlowLink:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.server_port)
        except OSError:
            client_writer.close()
            self._connections.discard(task)
            return
        try:
            await asyncio.gather(
                _pipe(client_reader, server_writer, 0.0), _pipe(server_reader, client_writer, self.latency)
            )
        finally:
            for writer in (client_writer, server_writer):
                writer.close()
            self._connections.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    """Copy until end of stream, each chunk written `latency` seconds after it was read, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while data := await reader.read(65536):
                await queue.put((loop.time() + latency, data))
        except ConnectionError:
            pass
        finally:
            await queue.put((loop.time() + latency, b""))  # the end of the stream, passed on as late as the rest

    async def write() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    with contextlib.suppress(OSError, RuntimeError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

    await asyncio.gather(read(), write())
