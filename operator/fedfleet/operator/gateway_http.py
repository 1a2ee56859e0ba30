"""The operator asks the fleet gateway's HTTP port about an artifact (`GET /v1/artifacts/<digest>`) when a
ModelRollout names one directly (`spec.model.artifact`): its size and architecture go into the signed release
record. No answer, or an artifact the gateway does not hold, is "not available yet": the rollout waits."""

from __future__ import annotations

import json
import logging

import aiohttp

from fedfleet.operator.reconcile.modelrollout import Candidate

log = logging.getLogger("fedfleet.operator.rollout")
TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)
MAX_ANSWER_BYTES = 64 << 10


class GatewayArtifacts:
    def __init__(self, address: str) -> None:
        self.address = address.rstrip("/")

    async def __call__(self, digest: str) -> Candidate | None:
        url = f"{self.address}/v1/artifacts/{digest}"
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(url) as response:
                body = await response.content.read(MAX_ANSWER_BYTES)
                if response.status != 200:
                    return None
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            log.info("artifact %s: gateway %s unreachable: %s", digest, self.address, err)
            return None
        try:
            info = json.loads(body)
            size, architecture = info["size"], info["architecture"]
        except (ValueError, KeyError, TypeError):
            log.warning("artifact %s: the gateway's answer is not an artifact description", digest)
            return None
        if info.get("digest") != digest or not isinstance(size, int) or size <= 0 or not isinstance(architecture, str):
            return None
        return Candidate(digest, size, architecture)
