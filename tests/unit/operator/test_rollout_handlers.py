"""Every rollout's handlers share one controller: kopf hands each object its own copy of the memo, and a
controller per object would register the rollout metrics twice (the second rollout's handlers then failed)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import kopf
from prometheus_client import CollectorRegistry

from fedfleet.operator.config import OperatorConfig
from fedfleet.operator.handlers import MEMO_STATE, OperatorState
from fedfleet.operator.k8s import JobApi, KubeClient
from fedfleet.operator.kube_credentials import KubeCredentials
from fedfleet.operator.metrics import OperatorMetrics
from fedfleet.operator.rollout_handlers import _controller


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
