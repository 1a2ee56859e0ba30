"""The gateway's metrics, read back from the registry: names and labels are what the rollout analysis queries,
refused reports never reach the accuracy data, and no device id is ever a label."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfleet.gateway.errors import GatewayError
from fedfleet.gateway.inputs import HealthReport
from gateway_support import FLEET, bench, canary_and_stable_devices, view_json


def report(version: str, accuracy: float = 0.9, **fields: object) -> HealthReport:
    values: dict[str, object] = {"loss": 0.3, "inference_latency_ms": 1.5, "examples": 25, **fields}
    return HealthReport(version=version, accuracy=accuracy, **values)  # type: ignore[arg-type]


def test_devices_by_version_and_role_within_the_check_in_window(tmp_path: Path) -> None:
    b = bench(tmp_path)
    canary, stable = canary_and_stable_devices(10.0, count=2)
    b.put(view_json(b.d1, b.d2, weight=10.0), b.v1, b.v2)
    for device in canary:
        b.gateway.check_in(FLEET, device, {}, current_version=b.d2)
    b.gateway.check_in(FLEET, stable[0], {}, current_version=b.d1)
    b.gateway.check_in(FLEET, stable[1], {}, current_version="")  # has not downloaded anything yet
    b.gateway.check_in(FLEET, "dev-old", {}, current_version="sha256:" + "0" * 64)  # a version no view names

    devices = "fedfleet_gateway_devices"
    assert b.sample(devices, fleet=FLEET, version=b.d2, role="canary") == 2
    assert b.sample(devices, fleet=FLEET, version=b.d1, role="stable") == 1
    assert b.sample(devices, fleet=FLEET, version="none", role="stable") == 1
    assert b.sample("fedfleet_gateway_checkins_total", fleet=FLEET) == 5
    assert sum(b.sample(devices, fleet=FLEET, version="other", role=r) or 0 for r in ("stable", "canary")) == 1

    b.clock.advance(50.0)
    b.gateway.check_in(FLEET, canary[0], {}, current_version=b.d2)
    b.clock.advance(30.0)  # 80 s: past the 75 s window for all but canary[0]
    assert b.sample(devices, fleet=FLEET, version=b.d2, role="canary") == 1
    assert b.sample(devices, fleet=FLEET, version=b.d1, role="stable") is None, "a silent device leaves no series"


def test_health_reports_feed_histograms_by_version_and_refusals_only_their_counters(tmp_path: Path) -> None:
    b = bench(tmp_path)
    canary, stable = canary_and_stable_devices(10.0, count=2)
    b.put(view_json(b.d1, b.d2, weight=10.0), b.v1, b.v2)
    b.gateway.report_health(FLEET, canary[0], {}, report(b.d2, 0.95, inference_latency_ms=0.3))
    b.gateway.report_health(FLEET, canary[1], {}, report(b.d2, activation_failure="bad_signature"))
    b.gateway.report_health(FLEET, stable[0], {}, report(b.d1, 0.85))
    for device, bad in ((stable[1], report(b.d1, 7.0)), (stable[1], report(b.d2, 0.99))):  # absurd; not assigned
        with pytest.raises(GatewayError):
            b.gateway.report_health(FLEET, device, {}, bad)

    reports = "fedfleet_gateway_health_reports_total"
    assert b.sample(reports, fleet=FLEET, version=b.d2, outcome="ok") == 1
    assert b.sample(reports, fleet=FLEET, version=b.d2, outcome="activation_failure") == 1
    assert b.sample(reports, fleet=FLEET, version=b.d1, outcome="ok") == 1
    assert b.sample(reports, fleet=FLEET, version=b.d1, outcome="refused") == 1
    assert b.sample(reports, fleet=FLEET, version=b.d2, outcome="refused") == 1
    failures = "fedfleet_gateway_activation_failures_total"
    assert b.sample(failures, fleet=FLEET, version=b.d2, reason="bad_signature") == 1

    accuracy = "fedfleet_gateway_model_accuracy"
    assert b.sample(f"{accuracy}_count", fleet=FLEET, version=b.d2) == 1, "a failed activation has no accuracy"
    assert b.sample(f"{accuracy}_sum", fleet=FLEET, version=b.d2) == pytest.approx(0.95)
    assert b.sample(f"{accuracy}_count", fleet=FLEET, version=b.d1) == 1, "the refused 7.0 never got in"
    assert b.sample(f"{accuracy}_bucket", fleet=FLEET, version=b.d1, le="0.84") == 0
    assert b.sample(f"{accuracy}_bucket", fleet=FLEET, version=b.d1, le="0.86") == 1
    assert b.sample("fedfleet_gateway_model_loss_count", fleet=FLEET, version=b.d1) == 1
    latency = "fedfleet_gateway_inference_latency_seconds"
    assert b.sample(f"{latency}_sum", fleet=FLEET, version=b.d2) == pytest.approx(0.0003)

    refusals = "fedfleet_gateway_refusals_total"
    assert b.sample(refusals, method="ReportModelHealth", reason="bad_health_report") == 1
    assert b.sample(refusals, method="ReportModelHealth", reason="not_assigned") == 1


def test_reporting_devices_are_distinct_and_start_over_with_each_generation(tmp_path: Path) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1), b.v1, b.v2)
    for device in ("a", "b", "c"):
        b.gateway.report_health(FLEET, device, {}, report(b.d1))
    b.clock.advance(10.0)
    b.gateway.report_health(FLEET, "a", {}, report(b.d1))  # again, after the throttle: still one device
    reporting = "fedfleet_gateway_reporting_devices"
    assert b.sample(reporting, fleet=FLEET, version=b.d1) == 3
    assert b.sample("fedfleet_gateway_health_reports_total", fleet=FLEET, version=b.d1, outcome="ok") == 4

    b.put(view_json(b.d1, b.d2, weight=1.0, generation=2), b.v2)
    assert b.sample(reporting, fleet=FLEET, version=b.d1) == 0
    assert b.sample(reporting, fleet=FLEET, version=b.d2) == 0, "every version of the view is shown, from 0"


def test_no_label_value_is_a_device_id_or_chosen_by_a_device(tmp_path: Path) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1), b.v1)
    devices = [f"device-{i:04d}" for i in range(20)]
    for device in devices:
        b.gateway.check_in(FLEET, device, {"region": f"r-{device}"}, current_version=b.d1)
        b.gateway.report_health(FLEET, device, {}, report(b.d1))
        with pytest.raises(GatewayError):
            b.gateway.report_health(FLEET, device, {}, report("sha256:" + device.encode().hex().ljust(64, "0")))
    values = {value for family in b.registry.collect() for sample in family.samples for value in sample.labels.values()}
    assert not any("device-" in value or value.startswith("r-") for value in values)
    assert {v for v in values if v.startswith("sha256:")} == {b.d1}
