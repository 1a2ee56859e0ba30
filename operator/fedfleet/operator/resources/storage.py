"""The claim that holds the aggregator's checkpoints, so a recreated pod resumes the job.

The checkpoint lives in a directory named after the job's uid inside the claim: a job deleted and created
again under the same name never resumes its predecessor's rounds, even where the storage outlives the claim.
"""

from __future__ import annotations

from typing import Any

from fedfleet.operator import naming
from fedfleet.operator.config import OperatorConfig


def build_state_claim(job: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": config.state_size}},
    }
    if config.storage_class:
        spec["storageClassName"] = config.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": naming.child_metadata(job, naming.claim_name(job["metadata"]["name"])),
        "spec": spec,
    }


def state_dir(job: dict[str, Any]) -> str:
    return f"{naming.STATE_DIR}/{job['metadata']['uid']}"
