"""Pure builders of a job's child objects, as plain dicts shaped like the API's JSON.

On the operator's floor; no Kubernetes API calls here (operator/k8s.py makes them).
"""

from __future__ import annotations

from fedfleet.operator.resources.configmap import aggregator_config, build_configmap
from fedfleet.operator.resources.job_credentials import JobCredentials, new_job_credentials
from fedfleet.operator.resources.pod import AGGREGATOR_CONTAINER, build_aggregator_pod, pod_spec_hash
from fedfleet.operator.resources.rbac import build_role, build_rolebinding, build_service_account
from fedfleet.operator.resources.secret import build_gateway_secret, build_secret
from fedfleet.operator.resources.service import build_service
from fedfleet.operator.resources.storage import build_state_claim

__all__ = [
    "AGGREGATOR_CONTAINER",
    "JobCredentials",
    "aggregator_config",
    "build_aggregator_pod",
    "build_configmap",
    "build_gateway_secret",
    "build_role",
    "build_rolebinding",
    "build_secret",
    "build_service",
    "build_service_account",
    "build_state_claim",
    "new_job_credentials",
    "pod_spec_hash",
]
