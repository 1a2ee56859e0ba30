"""A small in-process stand-in for the API server, over real HTTP, for the operator's handler tests.

It holds objects by path, answers GET, POST (409 when the name is taken), merge-PATCH and DELETE as the API
server does, keeps Events, and refuses what a test tells it to (`refuse`), with the status and message the real
one would give. The real API server is exercised by the e2e tests; this one lets a unit test drive the
operator's own HTTP client, k8s.py and the handlers together, with nothing of theirs replaced.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

JSON = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[str, JSON] = {}
        self.events: list[JSON] = []
        self.created: list[JSON] = []
        #: collection path (e.g. /api/v1/namespaces/ns/pods) -> (status, message) for POSTs to refuse
        self.refusals: dict[str, tuple[int, str]] = {}
        self.port = 0

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, path: str, body: JSON) -> None:
        self.objects[path] = copy.deepcopy(body)

    def refuse(self, collection: str, status: int, message: str) -> None:
        self.refusals[collection] = (status, message)

    def kinds_created(self, namespace: str) -> list[str]:
        """The kinds of the objects created in `namespace` through the API (a test `put`s its jobs)."""
        return sorted(body["kind"] for body in self.created if body["metadata"].get("namespace") == namespace)

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        if request.method == "GET":
            found = self.objects.get(path)
            return _json(found) if found is not None else _status(404, f"{path} not found")
        if request.method == "POST":
            body = await request.json()
            if path.endswith("/events"):
                self.events.append(body)
                return _json(body, 201)
            if path in self.refusals:
                return _status(*self.refusals[path])
            target = f"{path}/{body['metadata']['name']}"
            if target in self.objects:
                return _status(409, f"{body['kind']} {body['metadata']['name']} already exists")
            body["metadata"]["uid"] = f"uid-{len(self.objects)}"
            self.objects[target] = body
            self.created.append(body)
            return _json(body, 201)
        if request.method == "PATCH":
            patch = await request.json()
            base = path.removesuffix("/status")
            if base not in self.objects:
                return _status(404, f"{path} not found")
            if path.endswith("/status"):  # the status subresource changes the status only
                patch = {"status": patch.get("status")}
            self.objects[base] = merge_patch(self.objects[base], patch)
            return _json(self.objects[base])
        if request.method == "DELETE":
            gone = self.objects.pop(path, None)
            return _json(gone) if gone is not None else _status(404, f"{path} not found")
        return _status(405, request.method)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeKube]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        self.port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()


def _json(body: JSON, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _status(code: int, message: str) -> web.Response:
    """A metav1.Status, as the API server answers an error."""
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
    return web.json_response(body, status=code)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
