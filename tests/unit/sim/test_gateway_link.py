"""The in-process fleet link over a real Gateway: the device's calls reach the gateway as a device's would, the
gateway's refusals become the same LinkErrors the gRPC link raises, and what the device reports lands in the
gateway's figures under the right version and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfleet.device.model_health import HealthMeasurement
from fedfleet.device.model_updates import ActivationFailure, HealthReport, LinkError
from fedfleet.security.signing import SigningKey
from fedfleet.sim.gateway_link import GatewayLink
from rollout_support import FleetHarness, artifact_bytes, run_async


@pytest.fixture
def harness(tmp_path: Path) -> FleetHarness:
    return FleetHarness.in_process(tmp_path, SigningKey.generate())


@run_async
async def test_nothing_published_yet_is_worth_retrying(harness: FleetHarness) -> None:
    link = GatewayLink(harness.gateway, "default", "dev-00001")
    with pytest.raises(LinkError) as refused:
        await link.check_in({"os": "ios"}, None)
    assert refused.value.transient and refused.value.reason == "no_fleet_view"


@run_async
async def test_a_device_gets_its_offer_downloads_from_an_offset_and_its_reports_count(harness: FleetHarness) -> None:
    data = artifact_bytes(seed=1)
    version = harness.publish(data)
    harness.set_view(stable=version)
    link = GatewayLink(harness.gateway, "default", "dev-00001", app_version="2.3.0")

    answer = await link.check_in({"os": "ios"}, None)
    assert answer.offer is not None and answer.offer.version == version and answer.offer.role == "outside"
    assert answer.offer.release == harness.releases[version] and answer.offer.generation == 1
    assert answer.interval_seconds == 60.0
    assert b"".join([c async for c in link.download(version, 100)]) == data[100:]
    watch = link.watch({"os": "ios"})
    first = await anext(watch)
    assert first == answer.offer
    await watch.aclose()

    measured = HealthMeasurement(accuracy=0.75, loss=0.5, examples=8, latency_seconds=0.002)
    await link.report_health(HealthReport(version, measurement=measured), {"os": "ios"})
    await GatewayLink(harness.gateway, "default", "dev-00002").report_health(
        HealthReport(version, failure=ActivationFailure("digest_mismatch", "bytes differ")), {"os": "ios"}
    )
    [health] = harness.gateway.summary("default").health
    assert health.version == version and health.reports == 1 and health.mean_accuracy == 0.75
    assert health.failures_by_reason == {"digest_mismatch": 1}


@run_async
async def test_refusals_say_whether_to_retry_stop_or_drop(harness: FleetHarness) -> None:
    version = harness.publish(artifact_bytes(seed=1))
    other = harness.publish(artifact_bytes(seed=2))
    harness.set_view(stable=version)
    link = GatewayLink(harness.gateway, "default", "dev-00001")

    # A report on a version the device is not assigned: this report is dropped, the device carries on.
    measured = HealthMeasurement(accuracy=0.5, loss=1.0, examples=4, latency_seconds=0.01)
    with pytest.raises(LinkError) as not_assigned:
        await link.report_health(HealthReport(other, measurement=measured), {})
    assert not not_assigned.value.transient and not not_assigned.value.fatal
    assert not_assigned.value.reason == "not_assigned"
    # An artifact the fleet's view does not name does not exist for this fleet.
    with pytest.raises(LinkError) as unknown:
        [c async for c in link.download(other, 0)]
    assert unknown.value.reason == "unknown_artifact" and not unknown.value.transient
    # Attributes the gateway refuses are the device's own configuration: retrying cannot help.
    with pytest.raises(LinkError) as bad:
        await link.check_in({f"k{i}": "v" for i in range(40)}, None)
    assert bad.value.fatal and bad.value.reason == "bad_attributes"
    # A fleet the gateway does not serve.
    with pytest.raises(LinkError) as unknown_fleet:
        await GatewayLink(harness.gateway, "elsewhere", "dev-00001").check_in({}, None)
    assert unknown_fleet.value.fatal and unknown_fleet.value.reason == "unknown_fleet"
