"""The fleet views' ConfigMaps as the gateway's source of views: a real Gateway core fed by the view source from
ConfigMap objects as the API server returns them (the fetch is the API server's stand-in). What reaches the
devices, what is tried again and what is not, and what the gateway serves while the API server is away."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fedfleet.api.aggregator_config import Endpoint
from fedfleet.gateway.app import GatewayApp, GatewaySecurity
from fedfleet.gateway.config import GatewayConfig, ViewSource
from fedfleet.gateway.kube_configmaps import ApiUnreachable
from fedfleet.gateway.view_source import ConfigMapViewSource, ViewSourceError, configmap_name, parse_configmap
from fedfleet.models.artifact import SignedRelease
from fedfleet.persist.artifact_store import ArtifactStore
from fedfleet.security.certs import generate_ca, issue_server_cert
from fedfleet.security.tokens import new_key
from gateway_support import FLEET, SIGNING_KEY, Bench, artifact, bench, digest_of, record_for, view_json

JSON = dict[str, Any]


def signed(data: bytes, **changes: Any) -> JSON:
    record = record_for(data, **changes)
    return SignedRelease(record, SIGNING_KEY.sign(record.signing_message())).to_dict()


def configmap(version: str, view: bytes, releases: dict[str, JSON], **extra: str) -> JSON:
    """A fleet ConfigMap as the operator writes it and the API server returns it."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap_name(FLEET), "namespace": "fedfleet-system", "resourceVersion": version},
        "data": {"view.json": view.decode(), "releases.json": json.dumps(releases), **extra},
    }


class ApiServer:
    """What the fetch returns, by ConfigMap name; `down` makes every GET fail as an unreachable server does."""

    def __init__(self) -> None:
        self.objects: dict[str, JSON] = {}
        self.down = False
        self.gets = 0

    def fetch(self, name: str) -> JSON | None:
        self.gets += 1
        if self.down:
            raise ApiUnreachable("GET https://10.0.0.1/api/v1/...: [Errno 111] Connection refused")
        return self.objects.get(name)


def version_of(b: Bench, device: str = "dev-1") -> str | None:
    return b.gateway.assignment_for(FLEET, device, {}).assignment.version


def test_a_configmap_becomes_the_view_devices_are_answered_from(tmp_path: Path) -> None:
    b, api = bench(tmp_path), ApiServer()
    source = ConfigMapViewSource(b.gateway, [FLEET, "other"], api.fetch)
    api.objects[configmap_name(FLEET)] = configmap(
        "10", view_json(b.d1), {b.d1: signed(b.v1)}, **{"trusted-keys": "k\n"}
    )
    asyncio.run(source.poll())
    assert version_of(b) == b.d1 and source.applied == 1
    answer = b.gateway.assignment_for(FLEET, "dev-1", {})
    assert answer.release is not None and answer.release.signature == SignedRelease.from_dict(signed(b.v1)).signature

    # A rollout's step: the next resourceVersion, a new generation naming the candidate.
    api.objects[configmap_name(FLEET)] = configmap(
        "11", view_json(b.d1, b.d2, weight=100.0, generation=2), {b.d1: signed(b.v1), b.d2: signed(b.v2)}
    )
    asyncio.run(source.poll())
    assert version_of(b) == b.d2 and source.applied == 2


def test_an_open_watch_hears_a_changed_configmap_at_once(tmp_path: Path) -> None:
    b, api = bench(tmp_path), ApiServer()
    source = ConfigMapViewSource(b.gateway, [FLEET], api.fetch)
    api.objects[configmap_name(FLEET)] = configmap("1", view_json(b.d1), {b.d1: signed(b.v1)})

    async def scenario() -> str | None:
        await source.poll()
        watch = b.gateway.open_watch(FLEET, "dev-1", {})
        first = await watch.next(1.0)
        assert first is not None and first.assignment.version == b.d1
        api.objects[configmap_name(FLEET)] = configmap("2", view_json(b.d2, generation=2), {b.d2: signed(b.v2)})
        await source.poll()
        changed = await watch.next(1.0)
        b.gateway.close_watch(watch)
        return changed.assignment.version if changed is not None else None

    assert asyncio.run(scenario()) == b.d2


def test_a_resource_version_is_handled_once(tmp_path: Path) -> None:
    b, api = bench(tmp_path), ApiServer()
    source = ConfigMapViewSource(b.gateway, [FLEET], api.fetch)
    api.objects[configmap_name(FLEET)] = configmap("7", view_json(b.d1), {b.d1: signed(b.v1)})
    asyncio.run(source.poll())
    # Same resourceVersion, other content: not looked at (the API server never does this; it proves the gate).
    api.objects[configmap_name(FLEET)] = configmap("7", view_json(b.d2, generation=2), {b.d2: signed(b.v2)})
    asyncio.run(source.poll())
    assert version_of(b) == b.d1 and source.applied == 1


def test_while_the_api_server_is_away_the_held_view_is_served_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b, api = bench(tmp_path), ApiServer()
    source = ConfigMapViewSource(b.gateway, [FLEET], api.fetch)
    api.objects[configmap_name(FLEET)] = configmap("1", view_json(b.d1), {b.d1: signed(b.v1)})
    asyncio.run(source.poll())
    api.down = True
    with caplog.at_level(logging.INFO, logger="fedfleet.gateway.view_source"):
        for _ in range(5):
            asyncio.run(source.poll())
        assert version_of(b) == b.d1 and source.outage is not None
        api.down = False
        asyncio.run(source.poll())
    said = [r.getMessage() for r in caplog.records]
    assert sum("cannot be reached" in m for m in said) == 1, said
    assert sum("answers again" in m for m in said) == 1 and source.outage is None


def test_a_view_naming_an_artifact_not_here_yet_is_tried_again_until_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b, api = bench(tmp_path), ApiServer()
    source = ConfigMapViewSource(b.gateway, [FLEET], api.fetch)
    late = artifact("published after the view")
    api.objects[configmap_name(FLEET)] = configmap(
        "3", view_json(digest_of(late)), {digest_of(late): signed(late, architecture="logistic")}
    )
    with caplog.at_level(logging.WARNING, logger="fedfleet.gateway.view_source"):
        asyncio.run(source.poll())
        asyncio.run(source.poll())
    assert source.applied == 0
    assert sum("not published to this gateway" in r.getMessage() for r in caplog.records) == 1
    b.store.put(late)  # the aggregator's publish arrives
    asyncio.run(source.poll())  # the same resourceVersion, tried again
    assert version_of(b) == digest_of(late)


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({"view.json": "{not json", "releases.json": "{}"}, "view"),
        ({"view.json": "x", "releases.json": "[]"}, "releases.json: must be a JSON object"),
        ({"releases.json": "{}"}, "view.json: missing"),
    ],
)
def test_a_broken_configmap_is_refused_counted_and_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: dict[str, str], said: str
) -> None:
    b, api = bench(tmp_path), ApiServer()
    source = ConfigMapViewSource(b.gateway, [FLEET], api.fetch)
    api.objects[configmap_name(FLEET)] = configmap("1", view_json(b.d1), {b.d1: signed(b.v1)})
    asyncio.run(source.poll())
    broken = configmap("2", b"", {})
    broken["data"] = data
    api.objects[configmap_name(FLEET)] = broken
    with caplog.at_level(logging.WARNING, logger="fedfleet.gateway.view_source"):
        for _ in range(3):
            asyncio.run(source.poll())
    assert version_of(b) == b.d1  # still the last good view
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and said in warnings[0] and configmap_name(FLEET) in warnings[0]
    assert b.sample("fedfleet_gateway_refusals_total", method="PutFleetView", reason="bad_fleet_view") == 1.0


def test_a_tampered_release_or_an_older_generation_is_refused(tmp_path: Path) -> None:
    b, api = bench(tmp_path), ApiServer()
    source = ConfigMapViewSource(b.gateway, [FLEET], api.fetch)
    api.objects[configmap_name(FLEET)] = configmap("1", view_json(b.d1, generation=5), {b.d1: signed(b.v1)})
    asyncio.run(source.poll())
    lying = configmap("2", view_json(b.d2, generation=6), {b.d2: signed(b.v2, size=len(b.v2) + 1)})
    api.objects[configmap_name(FLEET)] = lying
    asyncio.run(source.poll())
    assert version_of(b) == b.d1
    assert b.sample("fedfleet_gateway_refusals_total", method="PutFleetView", reason="bad_fleet_view") == 1.0
    api.objects[configmap_name(FLEET)] = configmap("3", view_json(b.d2, generation=4), {b.d2: signed(b.v2)})
    asyncio.run(source.poll())
    assert version_of(b) == b.d1
    assert b.sample("fedfleet_gateway_refusals_total", method="PutFleetView", reason="stale_fleet_view") == 1.0


def test_a_missing_configmap_changes_nothing(tmp_path: Path) -> None:
    b, api = bench(tmp_path), ApiServer()
    source = ConfigMapViewSource(b.gateway, [FLEET], api.fetch)
    asyncio.run(source.poll())
    assert b.gateway.states.get(FLEET) is None and api.gets == 1


def test_parse_bounds_the_releases_and_names_the_bad_one(tmp_path: Path) -> None:
    b = bench(tmp_path)
    many = {f"sha256:{i:064x}": signed(b.v1) for i in range(3)}
    with pytest.raises(ViewSourceError, match="at most 2 releases, got 3"):
        parse_configmap(configmap("1", view_json(b.d1), many), max_releases=2)
    bad = signed(b.v1)
    bad["signature"] = "not base64!"
    with pytest.raises(ViewSourceError, match=rf"releases.json\[{b.d1}\]: signedRelease.signature"):
        parse_configmap(configmap("1", view_json(b.d1), {b.d1: bad}), max_releases=8)
    no_version = configmap("1", view_json(b.d1), {})
    del no_version["metadata"]["resourceVersion"]
    with pytest.raises(ViewSourceError, match="resourceVersion"):
        parse_configmap(no_version, max_releases=8)


def test_the_gateway_app_reads_the_views_before_it_serves_and_stops_polling_on_stop(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    v1 = artifact("app v1")
    store.put(v1)
    api = ApiServer()
    api.objects[configmap_name(FLEET)] = configmap("1", view_json(digest_of(v1)), {digest_of(v1): signed(v1)})
    ca = generate_ca("test CA")
    server = issue_server_cert(ca, ["127.0.0.1"])
    config = GatewayConfig(
        listen=Endpoint(host="127.0.0.1", port=0),
        http=None,
        state_dir=tmp_path / "state",
        artifact_dir=tmp_path / "artifacts",
        fleets=[FLEET],
        view_source=ViewSource(kind="configmap", namespace="fedfleet-system", interval_seconds=0.1),
    )
    security = GatewaySecurity(server.cert_pem, server.key_pem, ca.cert_pem, new_key(), new_key().hex())
    app = GatewayApp(config, security, store, registry=CollectorRegistry(), view_fetch=api.fetch)

    async def scenario() -> None:
        await app.start()
        try:
            # Before any background poll: start() read the ConfigMap before it began to serve.
            assert app.gateway.assignment_for(FLEET, "dev-1", {}).assignment.version == digest_of(v1)
            for _ in range(200):
                if api.gets >= 3:
                    break
                await asyncio.sleep(0.05)
            assert api.gets >= 3  # the background poll runs
        finally:
            await app.stop()
        after = api.gets
        await asyncio.sleep(0.3)
        assert api.gets == after  # and stops with the app

    asyncio.run(scenario())


def test_a_configmap_view_source_outside_a_pod_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = GatewayConfig(
        state_dir=tmp_path, artifact_dir=tmp_path / "a", fleets=[FLEET], view_source=ViewSource(kind="configmap")
    )
    ca = generate_ca("test CA")
    security = GatewaySecurity(ca.cert_pem, ca.key_pem, ca.cert_pem, new_key(), "x")
    with pytest.raises(ValueError, match=r"viewSource: kind configmap .* KUBERNETES_SERVICE_HOST is not set"):
        GatewayApp(config, security, ArtifactStore(tmp_path / "a"), registry=CollectorRegistry())
