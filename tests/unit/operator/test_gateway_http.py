"""The operator learns an artifact's size and architecture from the gateway's HTTP port (the real endpoint
over a real store); an unknown digest or an unreachable gateway is "not available yet"."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from artifact_samples import sample_bytes
from fedfleet.gateway.artifact_info import ROUTE, artifact_info
from fedfleet.models.artifact import decode
from fedfleet.operator.gateway_http import GatewayArtifacts
from fedfleet.persist.artifact_store import ArtifactStore
from fedfleet.proto.http_endpoints import HttpEndpoints


def test_lookup_over_the_gateways_http_port(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    data = sample_bytes()
    digest = store.put(data)

    async def scenario() -> None:
        http = HttpEndpoints(
            CollectorRegistry(), ready=lambda: True, prefix_routes={ROUTE: lambda d: artifact_info(store, d)}
        )
        port = await http.start("127.0.0.1", 0)
        try:
            lookup = GatewayArtifacts(f"http://127.0.0.1:{port}")
            found = await lookup(digest)
            assert found is not None
            assert (found.digest, found.size, found.architecture) == (digest, len(data), decode(data).architecture)
            assert await lookup("sha256:" + "0" * 64) is None
            assert await lookup("../../etc/passwd") is None
        finally:
            await http.stop()
        assert await GatewayArtifacts(f"http://127.0.0.1:{port}")(digest) is None  # gone: not available yet

    asyncio.run(scenario())
