"""The aggregator's configuration (the format of `fedfleet aggregator --config`), as a ConfigMap.

It is a template: the init step fills in the pod's own address (the aggregator listens on it: on the local
node agent all pods share one network namespace) and writes the final file next to the server certificate.
The job goes in inline with its namespace, so the aggregator accepts only tokens for `namespace/name`.
"""

from __future__ import annotations

from typing import Any

import yaml

from fedfleet.api.federatedjob import API_GROUP, API_VERSION, KIND, FederatedJobSpec
from fedfleet.operator import naming
from fedfleet.operator.resources.storage import state_dir

#: Spec fields only the operator acts on; left out so the aggregator's view of the job stays the same
#: when they change (suspending must not look like a different job to the checkpoint).
CLUSTER_ONLY_FIELDS = frozenset({"suspend", "active_deadline_seconds", "aggregator"})


def aggregator_config(job: dict[str, Any], spec: FederatedJobSpec) -> dict[str, Any]:
    meta = job["metadata"]
    run = naming.RUN_DIR
    return {
        "job": {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=set(CLUSTER_ONLY_FIELDS)),
        },
        "listen": {"host": "0.0.0.0", "port": spec.aggregator.port},
        "http": {"host": "0.0.0.0", "port": spec.aggregator.http_port},
        "tls": {
            "cert": f"{run}/{naming.SERVER_CERT}",
            "key": f"{run}/{naming.SERVER_KEY}",
            "ca": f"{run}/{naming.CA_CERT}",
            "generate": False,
        },
        "auth": {"tokenKey": f"{naming.AUTH_DIR}/{naming.TOKEN_KEY}", "generate": False},
        "stateDir": state_dir(job),
    }


def render_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def build_configmap(job: dict[str, Any], spec: FederatedJobSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": naming.child_metadata(job, naming.aggregator_name(job["metadata"]["name"])),
        "data": {naming.CONFIG_FILE: render_config(aggregator_config(job, spec))},
    }
