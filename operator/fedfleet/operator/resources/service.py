"""The aggregator's Service: a stable in-cluster name for the gRPC and HTTP ports."""

from __future__ import annotations

from typing import Any

from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.operator import naming


def build_service(job: dict[str, Any], spec: FederatedJobSpec) -> dict[str, Any]:
    name = job["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": naming.child_metadata(job, naming.aggregator_name(name)),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector_labels(name),
            "ports": [
                {"name": "grpc", "port": spec.aggregator.port, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "http", "port": spec.aggregator.http_port, "targetPort": "http", "protocol": "TCP"},
            ],
        },
    }
