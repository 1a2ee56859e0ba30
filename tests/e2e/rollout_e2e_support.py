"""What the ModelRollout end-to-end tests share: a simulated fleet running beside the cluster in its own
thread (its devices are counted from the devices themselves), rollout manifests, and status polling."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

from fedfleet.data.datasets import DatasetName
from fedfleet.security.signing import PublicKey, TrustedKeys
from fedfleet.sim.rollout_devices import RolloutFleetSpec
from fedfleet.sim.rollout_fleet import RolloutFleet, holdout_pool
from fedfleet.sim.rollout_links import grpc_links

JSON = dict[str, Any]
GROUP_PATH = "/apis/fedfleet.io/v1alpha1"


class FleetRunner:
    """A RolloutFleet on its own event loop in a thread: the tests stay synchronous and poll it."""

    def __init__(
        self,
        target: str,
        *,
        token_key: bytes,
        ca_pem: bytes,
        trusted_keys: Iterable[str],
        devices: int,
        seed: int,
        silent_fraction: float = 0.0,
        fleet: str = "default",
        dataset: DatasetName = "mnist5k",
        test_samples: int = 300,
        split_seed: int = 11,
        report_every_seconds: float = 5.0,
    ) -> None:
        links = grpc_links(target, fleet=fleet, token_key=token_key, ca_pem=ca_pem, call_seconds=30.0)
        trusted = TrustedKeys(PublicKey.from_text(text) for text in trusted_keys)
        spec = RolloutFleetSpec(devices=devices, seed=seed, silent_fraction=silent_fraction)
        # Devices evaluate on the job's held-out split (examples/federatedjob-cluster.yaml: digits, 300, seed 11).
        pool = holdout_pool(dataset, test_samples, split_seed)
        self.fleet = RolloutFleet(spec, pool, links, trusted, report_every_seconds=report_every_seconds)
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rollout-fleet", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            await self.fleet.run(self._stop)

        try:
            self.loop.run_until_complete(main())
        finally:
            self._done.set()

    def _call(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=60)

    def versions(self, online_only: bool = False) -> Counter[str | None]:
        result: Counter[str | None] = self._call(lambda: self.fleet.running_versions(online_only=online_only))
        return result

    def online(self) -> frozenset[str]:
        result: frozenset[str] = self._call(self.fleet.online)
        return result

    def running(self) -> dict[str, str | None]:
        """Device id → the version it runs now."""
        result: dict[str, str | None] = self._call(
            lambda: {i: u.running_version for i, u in self.fleet.updaters.items()}
        )
        return result

    def unsettled(self) -> list[str]:
        """Online devices not (yet) running the version they were last assigned: still downloading, or about to."""

        def check() -> list[str]:
            online = self.fleet.online()
            return sorted(
                i
                for i, u in self.fleet.updaters.items()
                if i in online and u.assigned is not None and u.running_version != u.assigned.version
            )

        result: list[str] = self._call(check)
        return result

    def go_offline(self, ids: Iterable[str]) -> None:
        self._call(self.fleet.go_offline, list(ids))

    def come_online(self, ids: Iterable[str]) -> None:
        self._call(self.fleet.come_online, list(ids))

    def refusals(self) -> dict[str, int]:
        """Activation failures by reason, summed over the fleet: artifacts the devices would not run."""
        result: dict[str, int] = self._call(lambda: dict(self.fleet.totals().stats.refused))
        return result

    def set_reporting(self, on: bool) -> None:
        """Every device reports health (or, off, none does: they still follow their assignment)."""

        def switch() -> None:
            for updater in self.fleet.updaters.values():
                updater.reports_health = on

        self._call(switch)

    def errors(self) -> dict[str, str]:
        result: dict[str, str] = self._call(lambda: dict(self.fleet.errors))
        return result

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._done.wait(timeout=60)
        self.thread.join(timeout=10)


def rollout_manifest(name: str, model: JSON, steps: list[JSON], metrics: list[JSON], **spec: Any) -> JSON:
    return {
        "apiVersion": "fedfleet.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": name},
        "spec": {"fleet": "default", "model": model, "analysis": {"metrics": metrics}, "steps": steps, **spec},
    }


def accuracy_metric(
    condition: str, *, baseline: str = "none", interval: str = "4s", count: int = 1, **extra: Any
) -> JSON:
    """Mean on-device accuracy of a version over the last minute, from the gateway's histogram."""
    query = (
        'sum(rate(fedfleet_gateway_model_accuracy_sum{fleet="{{fleet}}",version="{{version}}"}[1m]))'
        ' / sum(rate(fedfleet_gateway_model_accuracy_count{fleet="{{fleet}}",version="{{version}}"}[1m]))'
    )
    return {
        "name": "accuracy",
        "interval": interval,
        "count": count,
        "minReportingDevices": extra.pop("minReportingDevices", 2),
        "inconclusiveLimit": extra.pop("inconclusiveLimit", 20),
        "baseline": baseline,
        "successCondition": condition,
        "provider": {"prometheus": {"query": query}},
        **extra,
    }


def activation_failures_metric() -> JSON:
    """Fails as soon as one device refused to run the candidate (its digest or signature did not verify)."""
    query = 'sum(fedfleet_gateway_activation_failures_total{fleet="{{fleet}}",version="{{version}}"}) or vector(0)'
    return {
        "name": "activation-failures",
        "interval": "4s",
        "count": 30,
        "minReportingDevices": 1,
        "inconclusiveLimit": 30,
        "failureCondition": "result > 0",
        "provider": {"prometheus": {"query": query}},
    }


def rollout_status(kube: Any, namespace: str, name: str) -> JSON:
    obj: JSON = kube.get(f"{GROUP_PATH}/namespaces/{namespace}/modelrollouts/{name}")
    return obj.get("status") or {}
