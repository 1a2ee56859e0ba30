"""The aggregator's configuration (`fedfleet aggregator --config`, typed in fedfleet.api.aggregator_config), as a
ConfigMap.

It is a template: the init step fills in the pod's own address (the aggregator listens on it: on the local
node agent all pods share one network namespace) and writes the final file next to the server certificate.
The job goes in inline with its namespace, so the aggregator accepts only tokens for `namespace/name`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedfleet.api.aggregator_config import (
    AggregatorConfig,
    AuthSection,
    Endpoint,
    EvaluationData,
    GatewaySection,
    TlsSection,
    job_manifest,
)
from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.operator import naming
from fedfleet.operator.config import GatewayLink
from fedfleet.operator.resources.storage import state_dir

#: What the template listens on until the init step puts the pod's own address in.
ANY_HOST = "0.0.0.0"


def aggregator_config(
    job: dict[str, Any], spec: FederatedJobSpec, gateway: GatewayLink | None = None
) -> AggregatorConfig:
    """The configuration template of `job`'s aggregator (pure); with `gateway`, it publishes the final model
    there, with the CA and publish token of the job's gateway Secret (mounted at GATEWAY_DIR)."""
    meta = job["metadata"]
    run = Path(naming.RUN_DIR)
    # The fleet in the cluster is the one `fedfleet device-sim` runs from the same spec: spec.simulation says
    # how many devices it has and which data the server holds out for evaluation.
    sim = spec.simulation
    return AggregatorConfig(
        job=job_manifest(meta["name"], meta["namespace"], spec),
        listen=Endpoint(host=ANY_HOST, port=spec.aggregator.port),
        http=Endpoint(host=ANY_HOST, port=spec.aggregator.http_port),
        tls=TlsSection(
            cert=run / naming.SERVER_CERT, key=run / naming.SERVER_KEY, ca=run / naming.CA_CERT, generate=False
        ),
        auth=AuthSection(token_key=Path(naming.AUTH_DIR) / naming.TOKEN_KEY, generate=False),
        state_dir=Path(state_dir(job)),
        fleet_size=sim.devices,
        evaluation=EvaluationData(dataset=sim.dataset, test_samples=sim.test_samples),
        gateway=None if gateway is None else gateway_section(gateway),
    )


def gateway_section(gateway: GatewayLink) -> GatewaySection:
    where = Path(naming.GATEWAY_DIR)
    return GatewaySection(
        address=gateway.address,
        ca_file=where / naming.CA_CERT,
        publish_token_file=where / naming.GATEWAY_PUBLISH_TOKEN,
    )


def build_configmap(job: dict[str, Any], config_text: str) -> dict[str, Any]:
    """The ConfigMap holding `config_text` (`dump_config(aggregator_config(...))`, rendered once per reconcile:
    the pod's hash is computed from the same text)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": naming.child_metadata(job, naming.aggregator_name(job["metadata"]["name"])),
        "data": {naming.CONFIG_FILE: config_text},
    }
