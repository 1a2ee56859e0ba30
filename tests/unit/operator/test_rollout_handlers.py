"""Every rollout's handlers share one controller: kopf hands each object its own copy of the memo, and a
controller per object would register the rollout metrics twice (the second rollout's handlers then failed)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import kopf
import kopf_diffbase
import yaml
from prometheus_client import CollectorRegistry

from fedfleet.operator.config import OperatorConfig
from fedfleet.operator.handlers import MEMO_STATE, OperatorState
from fedfleet.operator.k8s import JobApi, KubeClient
from fedfleet.operator.kube_credentials import KubeCredentials
from fedfleet.operator.metrics import OperatorMetrics
from fedfleet.operator.rollout_handlers import _controller

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_two_rollouts_memos_share_one_controller(tmp_path: Path) -> None:
    async def scenario() -> None:
        creds = KubeCredentials(server="https://127.0.0.1:1", ca_file=None)
        client = KubeClient.connect(creds)
        try:
            state = OperatorState(OperatorConfig(), creds, JobApi(client), OperatorMetrics(CollectorRegistry()))
            operator_memo = kopf.Memo()
            operator_memo[MEMO_STATE] = state
            first, second = copy.copy(operator_memo), copy.copy(operator_memo)  # as kopf does per object
            assert _controller(first) is _controller(second)
        finally:
            await client.close()

    asyncio.run(scenario())


def _example_rollout() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO_ROOT / "examples" / "rollout.yaml").read_text())
    body["metadata"].update(namespace="fleet", uid="5e6f-uid", generation=1)
    return body


def test_a_rollout_with_a_140_kb_annotation_stays_within_the_limit_and_a_spec_change_is_still_seen() -> None:
    settings = kopf_diffbase.operator_settings()
    big = _example_rollout()
    big["metadata"]["annotations"] = {"example.com/notes": "x" * 140_000}
    stored = kopf_diffbase.handled(settings, big)
    assert kopf_diffbase.annotations_size(stored) < kopf_diffbase.ANNOTATIONS_LIMIT
    base = kopf_diffbase.stored_diffbase(settings, stored)
    assert kopf_diffbase.essence(settings, stored) == base  # its own record is no change
    longer = copy.deepcopy(stored)
    longer["spec"]["progressDeadlineSeconds"] = 900
    assert kopf_diffbase.essence(settings, longer)["spec"]["progressDeadlineSeconds"] == 900
    assert kopf_diffbase.essence(settings, longer) != base
