"""`GET /v1/artifacts/<digest>` on the gateway's HTTP port: what the operator needs to sign a release of an
artifact published by hand (`fedfleet publish`): its size and architecture, and the metadata it was
published with. Read-only, no device data; a digest the store does not hold is 404.
"""

from __future__ import annotations

import json

from fedfleet.persist.artifact_store import ArtifactStore, ArtifactStoreError

ROUTE = "/v1/artifacts/"


def artifact_info(store: ArtifactStore, digest: str) -> tuple[int, str, bytes]:
    try:
        if not store.has(digest):
            return 404, "application/json", b'{"error": "not found"}\n'
        header = store.header(digest)
        body = {
            "digest": digest,
            "size": store.size(digest),
            "architecture": header.architecture,
            "metadata": header.metadata.to_dict(),
        }
    except (ArtifactStoreError, ValueError) as err:
        problem = getattr(err, "problem", "invalid")
        status = 400 if str(problem) == "invalid_digest" else 404
        return status, "application/json", json.dumps({"error": str(err)[:200]}).encode() + b"\n"
    return 200, "application/json", json.dumps(body, sort_keys=True).encode() + b"\n"
