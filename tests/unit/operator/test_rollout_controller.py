"""The ModelRollout controller over an in-memory API server and a Prometheus stand-in: it steps a rollout
through its weights on passing analyses, aborts on a failing one (the fleet's view drops the canary), never
promotes without data, signs one release per revision, and continues where the status says after a restart.

The real API server and the real Prometheus are exercised by the e2e tests; here the controller's decisions
over many reconciliations are what is under test, on a simulated clock."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_stub import serving

from fedfleet.models.artifact import SignedRelease
from fedfleet.operator.k8s import ApiError
from fedfleet.operator.reconcile import modelrollout as plan
from fedfleet.operator.rollout_controller import RolloutController, RolloutSettings
from fedfleet.operator.rollout_metrics import RolloutMetrics
from fedfleet.rollout.assignment import FleetView, Role, assign
from fedfleet.security.releases import verify_release
from fedfleet.security.signing import PublicKey, TrustedKeys

STABLE = "sha256:" + "a" * 64
CANDIDATE = "sha256:" + "b" * 64
FLEET_NS = "fedfleet-system"

SPEC: dict[str, Any] = {
    "fleet": "default",
    "model": {"federatedJob": "mnist"},
    "analysis": {
        "metrics": [
            {
                "name": "accuracy",
                "interval": "10s",
                "count": 2,
                "minReportingDevices": 5,
                "baseline": "stable",
                "successCondition": "result >= baseline - 0.02",
                "provider": {"prometheus": {"query": 'avg(acc{fleet="{{fleet}}",version="{{version}}"})'}},
            }
        ]
    },
    "steps": [
        {"setWeight": 5},
        {"analysis": {"metrics": ["accuracy"]}},
        {"setWeight": 50},
        {"pause": {"duration": "10s"}},
        {"setWeight": 100},
    ],
}


class MemoryApi:
    """The calls RolloutApi makes, on dicts: merge patches, resourceVersion checks, Secrets' stringData."""

    def __init__(self) -> None:
        self.rollout: dict[str, Any] = {
            "apiVersion": "fedfleet.io/v1alpha1",
            "kind": "ModelRollout",
            "metadata": {"name": "mnist", "namespace": "ml", "uid": "u-1", "generation": 1, "annotations": {}},
            "spec": copy.deepcopy(SPEC),
        }
        self.job_status: dict[str, Any] = {}
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str]] = []
        self.version = 0

    async def get_rollout(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.rollout)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        current = self.rollout.setdefault("status", {})
        for key, value in status.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = copy.deepcopy(value)
        return self.rollout

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return {"status": copy.deepcopy(self.job_status)}

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.configmaps.get(name))

    async def put_configmap(self, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        held = self.configmaps.get(name)
        expected = body["metadata"].get("resourceVersion")
        if (held is None) != (expected is None) or (held and held["metadata"]["resourceVersion"] != expected):
            raise ApiError(409, "PUT", name, {"message": "conflict"})
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.configmaps[name] = stored

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.secrets.get(name))

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> bool:
        data = {k: base64.b64encode(v.encode()).decode() for k, v in body.get("stringData", {}).items()}
        self.secrets[body["metadata"]["name"]] = {**body, "data": data}
        return True

    async def post_event(self, rollout: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))

    def view(self) -> FleetView:
        held = self.configmaps[plan.fleet_configmap_name("default")]
        return FleetView.from_dict(json.loads(held["data"][plan.VIEW_KEY]))


class FakePrometheus:
    """Answers `avg(acc{...version="X"})` from a table and the reporting-devices query with `devices`."""

    def __init__(self) -> None:
        self.accuracy: dict[str, float | None] = {STABLE: 0.90, CANDIDATE: 0.91}
        self.devices = 50
        self.queries: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        query = str((await request.post())["query"])
        self.queries.append(query)
        if query.count("(") != query.count(")"):  # Prometheus's words for it
            error = f'invalid parameter "query": 1:{len(query)}: parse error: unclosed left parenthesis'
            return web.json_response({"status": "error", "errorType": "bad_data", "error": error}, status=400)
        version = re.search(r'version="([^"]+)"', query)
        if "reporting_devices" in query:
            value: float | None = float(self.devices)
        elif "fedfleet_gateway_devices" in query:
            return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})
        else:
            value = self.accuracy.get(version.group(1) if version else "")
        result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world() -> Iterator[tuple[MemoryApi, FakePrometheus, Clock, str]]:
    api, prometheus, clock = MemoryApi(), FakePrometheus(), Clock()
    # Devices ran the stable version before this rollout: the fleet's view says so.
    view = FleetView(fleet="default", stable=STABLE, rollouts=(), generation=1)
    body = plan.fleet_configmap(FLEET_NS, "default", view, {}, [], None)
    asyncio.run(api.put_configmap(FLEET_NS, body))
    yield api, prometheus, clock, ""


def run(api: MemoryApi, prometheus: FakePrometheus, clock: Clock, ticks: int, *, every: float = 2.0) -> None:
    async def scenario() -> None:
        async with serving(prometheus.handle) as address:
            settings = RolloutSettings(FLEET_NS, address)
            controller = RolloutController(api, settings, RolloutMetrics(CollectorRegistry()), clock=clock)  # type: ignore[arg-type]
            for _ in range(ticks):
                await controller.reconcile("ml", "mnist")
                clock.now += every

    asyncio.run(scenario())


def publish(api: MemoryApi) -> None:
    api.job_status["model"] = {"digest": CANDIDATE, "size": 4096, "architecture": "2nn", "round": 10}


def test_waits_for_the_model_without_touching_devices(world: Any) -> None:
    api, prometheus, clock, _ = world
    run(api, prometheus, clock, 3)
    assert api.rollout["status"]["phase"] == "Pending"
    assert api.rollout["status"]["reason"] == "WaitingForModel"
    assert api.view().rollouts == ()


def test_passing_analysis_steps_to_healthy_and_the_candidate_becomes_stable(world: Any) -> None:
    api, prometheus, clock, _ = world
    publish(api)
    weights = []
    for _ in range(30):
        run(api, prometheus, clock, 1)
        weights.append(api.rollout["status"]["weight"])
        if api.rollout["status"]["phase"] == "Healthy":
            break
    status = api.rollout["status"]
    assert status["phase"] == "Healthy"
    assert weights == sorted(weights) and weights[-1] == 100  # never backwards
    assert 5 in weights and 50 in weights
    view = api.view()
    assert view.stable == CANDIDATE and view.rollouts == ()
    # The release was signed by the fleet's key, and devices trusting that key accept it.
    trusted = api.configmaps[plan.fleet_configmap_name("default")]["data"][plan.TRUSTED_KEYS_KEY].split()
    release = SignedRelease.from_dict(status["release"])
    verify_release(release, TrustedKeys(PublicKey.from_text(t) for t in trusted))
    assert release.record.digest == CANDIDATE and release.record.revision == status["revision"]
    assert ("Normal", "RolloutCompleted") in api.events


def test_a_finished_rollout_sets_the_stable_version_once_never_over_a_newer_one(world: Any) -> None:
    api, prometheus, clock, _ = world
    publish(api)
    for _ in range(30):
        run(api, prometheus, clock, 1)
        if api.rollout["status"]["phase"] == "Healthy":
            break
    assert api.view().stable == CANDIDATE
    assert api.rollout["status"]["stablePublished"] == api.rollout["status"]["revision"]
    # A newer rollout finishes and makes its own version the fleet's stable one...
    newer = "sha256:" + "c" * 64
    name = plan.fleet_configmap_name("default")
    held = api.configmaps[name]
    view = api.view()
    replaced = FleetView(fleet="default", stable=newer, rollouts=view.rollouts, generation=view.generation + 1)
    body = plan.fleet_configmap(FLEET_NS, "default", replaced, {}, [], held["metadata"]["resourceVersion"])
    asyncio.run(api.put_configmap(FLEET_NS, body))
    # ...and this older finished rollout, reconciled again (a resync, an operator restart), leaves it be.
    run(api, prometheus, clock, 3)
    assert api.view().stable == newer


def test_while_stepping_the_view_holds_exactly_the_weight_and_a_release_for_the_candidate(world: Any) -> None:
    api, prometheus, clock, _ = world
    publish(api)
    run(api, prometheus, clock, 2)
    status = api.rollout["status"]
    assert status["weight"] == 5 and status["phase"] == "Progressing"
    view = api.view()
    [entry] = view.rollouts
    assert (entry.candidate, entry.stable, entry.weight) == (CANDIDATE, STABLE, 5.0)
    releases = json.loads(api.configmaps[plan.fleet_configmap_name("default")]["data"][plan.RELEASES_KEY])
    assert CANDIDATE in releases
    canary = sum(assign(view, f"d{i}", {}).role is Role.CANARY for i in range(4000))
    assert abs(canary / 4000 - 0.05) < 0.015


def test_a_failing_analysis_aborts_and_the_canary_leaves_the_view(world: Any) -> None:
    api, prometheus, clock, _ = world
    prometheus.accuracy[CANDIDATE] = 0.50
    publish(api)
    run(api, prometheus, clock, 6)
    status = api.rollout["status"]
    assert status["phase"] == "Degraded" and status["weight"] == 0
    assert api.view().rollouts == () and api.view().stable == STABLE
    assert any(kind == "Warning" for kind, _ in api.events)
    assert all(r["phase"] != "Successful" for r in status["analysisRuns"])


def test_no_data_never_promotes(world: Any) -> None:
    api, prometheus, clock, _ = world
    prometheus.devices = 0  # nobody reports
    publish(api)
    run(api, prometheus, clock, 20, every=10.0)
    status = api.rollout["status"]
    assert status["weight"] == 5
    assert status["phase"] == "Paused" and status["reason"] == "AnalysisInconclusive"


def test_a_new_controller_continues_from_the_status(world: Any) -> None:
    api, prometheus, clock, _ = world
    publish(api)
    run(api, prometheus, clock, 2)
    before = copy.deepcopy(api.rollout["status"])
    release = before["release"]
    run(api, prometheus, clock, 1)  # a fresh controller object: the operator restarted
    after = api.rollout["status"]
    assert after["revision"] == before["revision"] and after["salt"] == before["salt"]
    assert after["weight"] >= before["weight"]
    assert after["release"] == release  # not signed again


def test_a_condition_that_does_not_compile_holds_the_rollout(world: Any) -> None:
    api, prometheus, clock, _ = world
    api.rollout["spec"]["analysis"]["metrics"][0]["successCondition"] = "result >>> 1"
    publish(api)
    run(api, prometheus, clock, 2)
    status = api.rollout["status"]
    assert status["reason"] == "InvalidSpec"
    assert "successCondition" in status["message"]
    assert api.view().rollouts == ()


def test_a_query_that_does_not_parse_holds_the_rollout_before_any_device_moves(world: Any) -> None:
    api, prometheus, clock, _ = world
    metric = api.rollout["spec"]["analysis"]["metrics"][0]
    metric["provider"]["prometheus"]["query"] = 'avg(acc{fleet="{{fleet}}",version="{{version}}"}'
    publish(api)
    run(api, prometheus, clock, 3)
    status = api.rollout["status"]
    assert status["reason"] == "InvalidSpec"
    assert status["message"].startswith("spec.analysis.metrics[0].provider.prometheus.query: does not parse")
    assert "unclosed left parenthesis" in status["message"]
    assert api.view().rollouts == ()  # no device was sent anywhere
    assert api.events.count(("Warning", "InvalidSpec")) == 1  # said once, not on every reconciliation
    # Fixed in Git: the rollout starts.
    metric["provider"]["prometheus"]["query"] = 'avg(acc{fleet="{{fleet}}",version="{{version}}"})'
    api.rollout["metadata"]["generation"] = 2
    run(api, prometheus, clock, 2)
    assert api.rollout["status"]["weight"] == 5
    assert [r.weight for r in api.view().rollouts] == [5]
