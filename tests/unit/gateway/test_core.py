"""The Gateway core: assignments from the fleet's view, the view's admission rules, downloads, health reports,
publishing, and the refusals of each, with their reasons."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedfleet.gateway.core import GatewaySettings
from fedfleet.gateway.errors import GatewayError
from fedfleet.gateway.inputs import HealthReport
from fedfleet.gateway.releases import SignedParts
from fedfleet.proto.refusals import Refusal
from gateway_support import (
    FLEET,
    artifact,
    bench,
    canary_and_stable_devices,
    digest_of,
    release,
    view_json,
)


def refused(call: object, *args: object, **kwargs: object) -> Refusal:
    with pytest.raises(GatewayError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value.reason


def test_no_view_yet_is_refused_so_devices_keep_what_they_run(tmp_path: Path) -> None:
    b = bench(tmp_path)
    assert refused(b.gateway.check_in, FLEET, "dev-1", {}) == Refusal.NO_FLEET_VIEW
    assert refused(b.gateway.assignment_for, FLEET, "dev-1", {}) == Refusal.NO_FLEET_VIEW
    assert refused(b.gateway.assignment_for, "nowhere", "dev-1", {}) == Refusal.UNKNOWN_FLEET


def test_assignments_follow_the_view_and_carry_the_release_of_their_version(tmp_path: Path) -> None:
    b = bench(tmp_path)
    assert b.put(view_json(b.d1), b.v1) == (1, True)
    answer = b.gateway.check_in(FLEET, "dev-1", {"region": "eu"})
    assert answer.assignment.version == b.d1 and answer.assignment.role == "outside"
    assert answer.release is not None and answer.release.digest == b.d1 and answer.release.size == len(b.v1)
    assert answer.generation == 1

    canary, stable = canary_and_stable_devices(10.0)
    b.put(view_json(b.d1, b.d2, weight=10.0, generation=2), b.v2)  # v1's release is held from before
    for device in canary:
        got = b.gateway.assignment_for(FLEET, device, {})
        assert (got.assignment.version, got.assignment.role) == (b.d2, "canary")
        assert got.release is not None and got.release.size == len(b.v2)
    for device in stable:
        assert b.gateway.assignment_for(FLEET, device, {}).assignment.version == b.d1


def test_a_restarted_gateway_answers_the_same(tmp_path: Path) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1, b.d2, weight=50.0, generation=4), b.v1, b.v2)
    devices = [f"dev-{i}" for i in range(50)]
    before = {d: b.gateway.assignment_for(FLEET, d, {}) for d in devices}

    again = bench(tmp_path)  # a new process on the same state dir
    after = {d: again.gateway.assignment_for(FLEET, d, {}) for d in devices}
    assert after == before
    assert {a.assignment.version for a in after.values()} == {b.d1, b.d2}


def test_the_view_is_refused_when_it_is_older_conflicting_or_names_what_is_missing(tmp_path: Path) -> None:
    b = bench(tmp_path)
    put = b.gateway.put_fleet_view
    b.put(view_json(b.d1, generation=5), b.v1)
    assert b.put(view_json(b.d1, generation=5)) == (5, False), "the same view again changes nothing"
    assert refused(put, FLEET, view_json(b.d1, generation=4), {}) == Refusal.STALE_FLEET_VIEW
    assert refused(put, FLEET, view_json(b.d2, generation=5), {}) == Refusal.STALE_FLEET_VIEW
    missing = artifact("never published")
    assert refused(put, FLEET, view_json(digest_of(missing), generation=6), {}) == Refusal.ARTIFACT_MISSING
    # v2 is published but no signed release for it was ever given.
    assert refused(put, FLEET, view_json(b.d2, generation=6), {}) == Refusal.BAD_FLEET_VIEW
    assert refused(put, FLEET, view_json(b.d1, generation=6, fleet="other"), {}) == Refusal.BAD_FLEET_VIEW
    assert refused(put, "nowhere", view_json(b.d1, generation=6), {}) == Refusal.UNKNOWN_FLEET
    assert refused(put, FLEET, b"{not json", {}) == Refusal.BAD_FLEET_VIEW
    assert refused(put, FLEET, b'{"fleet": "default", "generation": 0}', {}) == Refusal.BAD_FLEET_VIEW
    # Nothing refused changed what devices are told.
    assert b.gateway.assignment_for(FLEET, "dev-1", {}).generation == 5


def test_a_release_that_cannot_be_its_artifacts_is_refused(tmp_path: Path) -> None:
    b = bench(tmp_path)
    put = b.gateway.put_fleet_view
    good = release(b.v1)
    wrong_artifact = release(b.v2)
    cases = {
        "another artifact's record": {b.d1: wrong_artifact},
        "a record that is not JSON": {b.d1: SignedParts(b"\xff\xfe", good.signature, good.key_id)},
        "no signature": {b.d1: SignedParts(good.record, b"", good.key_id)},
        "another key id than the record's": {b.d1: SignedParts(good.record, good.signature, "ed25519:ffff")},
        "another architecture than the artifact's": {b.d1: release(b.v1, architecture="mlp")},
        "another size than the artifact's": {b.d1: release(b.v1, size=len(b.v1) + 1)},
        "a record spelled otherwise than canonically": {
            b.d1: SignedParts(b" " + good.record, good.signature, good.key_id)
        },
    }
    for case, releases in cases.items():
        assert refused(put, FLEET, view_json(b.d1), releases) == Refusal.BAD_FLEET_VIEW, case
    assert b.gateway.states.get(FLEET) is None


def test_downloads_resume_at_an_offset_and_refuse_what_the_fleet_does_not_name(tmp_path: Path) -> None:
    b = bench(tmp_path, GatewaySettings(download_chunk_bytes=4096))
    b.put(view_json(b.d1, b.d2, weight=1.0), b.v1, b.v2)
    size, chunks = b.gateway.download(FLEET, b.d2, 0)
    parts = list(chunks)
    assert size == len(b.v2) and all(len(data) <= 4096 for _, data in parts)
    assert b"".join(data for _, data in parts) == b.v2
    assert [offset for offset, _ in parts] == [0, 4096]

    _, rest = b.gateway.download(FLEET, b.d2, 1234)
    assert b"".join(data for _, data in rest) == b.v2[1234:]
    _, nothing = b.gateway.download(FLEET, b.d2, len(b.v2))
    assert list(nothing) == []
    assert refused(b.gateway.download, FLEET, b.d2, len(b.v2) + 1) == Refusal.OFFSET_OUT_OF_RANGE
    assert refused(b.gateway.download, FLEET, b.d2, -1) == Refusal.OFFSET_OUT_OF_RANGE
    stray = b.store.put(artifact("published, but in no view"))
    assert refused(b.gateway.download, FLEET, stray, 0) == Refusal.UNKNOWN_ARTIFACT
    assert refused(b.gateway.download, FLEET, "sha256:../../etc/passwd", 0) == Refusal.UNKNOWN_ARTIFACT


def test_health_reports_only_for_the_assigned_version_with_sane_values(tmp_path: Path) -> None:
    b = bench(tmp_path)
    canary, stable = canary_and_stable_devices(10.0, count=1)
    b.put(view_json(b.d1, b.d2, weight=10.0), b.v1, b.v2)
    ok = HealthReport(version=b.d2, accuracy=0.91, loss=0.3, inference_latency_ms=0.4, examples=20)
    b.gateway.report_health(FLEET, canary[0], {}, ok)
    assert refused(b.gateway.report_health, FLEET, stable[0], {}, ok) == Refusal.NOT_ASSIGNED
    absurd = {
        "accuracy 7": HealthReport(version=b.d2, accuracy=7.0, loss=0.3, examples=20),
        "negative latency": HealthReport(version=b.d2, accuracy=0.9, inference_latency_ms=-1.0, examples=20),
        "NaN loss": HealthReport(version=b.d2, accuracy=0.9, loss=math.nan, examples=20),
        "no examples": HealthReport(version=b.d2, accuracy=0.9, examples=0),
        "an unknown failure": HealthReport(version=b.d2, activation_failure="#99"),
        "not a digest": HealthReport(version="latest", accuracy=0.9, examples=1),
    }
    for case, report in absurd.items():
        assert refused(b.gateway.report_health, FLEET, canary[0], {}, report) == Refusal.BAD_HEALTH_REPORT, case


def test_a_device_repeating_its_report_is_throttled_per_version(tmp_path: Path) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1), b.v1)
    report = HealthReport(version=b.d1, accuracy=0.9, loss=0.3, inference_latency_ms=1.0, examples=10)
    b.gateway.report_health(FLEET, "dev-1", {}, report)
    assert refused(b.gateway.report_health, FLEET, "dev-1", {}, report) == Refusal.REPORT_TOO_FREQUENT
    b.gateway.report_health(FLEET, "dev-2", {}, report)  # another device is not held back
    b.clock.advance(5.0)
    b.gateway.report_health(FLEET, "dev-1", {}, report)


def test_attributes_and_request_fields_are_bounded(tmp_path: Path) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1), b.v1)
    too_many = {f"k{i}": "v" for i in range(33)}
    assert refused(b.gateway.check_in, FLEET, "dev-1", too_many) == Refusal.BAD_ATTRIBUTES
    assert refused(b.gateway.check_in, FLEET, "dev-1", {"region": "x" * 257}) == Refusal.BAD_ATTRIBUTES
    assert refused(b.gateway.check_in, FLEET, "dev-1", {"k" * 64: "v"}) == Refusal.BAD_ATTRIBUTES
    assert refused(b.gateway.check_in, FLEET, "dev-1", {"os": "an\x00droid"}) == Refusal.BAD_ATTRIBUTES
    assert refused(b.gateway.check_in, FLEET, "dev-1", {}, current_version="v1") == Refusal.BAD_REQUEST
    assert refused(b.gateway.check_in, FLEET, "dev-1", {}, app_version="1" * 65) == Refusal.BAD_REQUEST
    assert refused(b.gateway.open_watch, FLEET, "dev-1", too_many) == Refusal.BAD_ATTRIBUTES
    b.gateway.check_in(FLEET, "dev-1", {f"k{i}": "v" * 256 for i in range(32)}, current_version=b.d1)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_publishing_stores_what_hashes_to_its_digest_and_nothing_else(tmp_path: Path) -> None:
    b = bench(tmp_path)
    model = artifact("published over the admin API", 10_000)
    digest = digest_of(model)

    async def scenario() -> None:
        assert await b.gateway.publish(_chunks(model[:4000], model[4000:]), digest, len(model)) == digest
        assert b.store.read_chunk(digest, 0, len(model)) == model
        tampered = model[:-1] + b"\x00"
        other = digest_of(artifact("other", 10_000))
        for chunks, size in (
            (_chunks(tampered), len(model)),  # wrong bytes for the digest
            (_chunks(model, b"more"), len(model)),  # longer than announced
            (_chunks(model[:10]), len(model)),  # shorter than announced
        ):
            with pytest.raises(GatewayError) as info:
                await b.gateway.publish(chunks, other, size)
            assert info.value.reason == Refusal.PUBLISH_REJECTED
        not_a_model = b"x" * 5000  # hashes to its digest, but is no artifact
        with pytest.raises(GatewayError) as info:
            await b.gateway.publish(_chunks(not_a_model), digest_of(not_a_model), len(not_a_model))
        assert info.value.reason == Refusal.PUBLISH_REJECTED and "artifact" in info.value.message
        with pytest.raises(GatewayError) as info:
            await b.gateway.publish(_chunks(model), digest, 10**12)
        assert info.value.reason == Refusal.PUBLISH_REJECTED
        with pytest.raises(GatewayError) as info:
            await b.gateway.publish(_chunks(model), "sha256:nope", len(model))
        assert info.value.reason == Refusal.BAD_REQUEST

    asyncio.run(scenario())
    assert set(b.store.digests()) == {b.d1, b.d2, digest}
    assert list((tmp_path / "incoming").iterdir()) == [], "no spooled upload is left behind"


def test_the_summary_counts_devices_and_reports_of_the_current_generation(tmp_path: Path) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1), b.v1)
    for i in range(3):
        b.gateway.check_in(FLEET, f"dev-{i}", {}, current_version=b.d1)
        report = HealthReport(version=b.d1, accuracy=0.8 + 0.05 * i, loss=0.5, inference_latency_ms=2.0, examples=9)
        b.gateway.report_health(FLEET, f"dev-{i}", {}, report)
    summary = b.gateway.summary(FLEET)
    assert summary.generation == 1 and summary.devices == {(b.d1, "outside"): 3}
    (health,) = summary.health
    assert (health.version, health.role, health.reports, health.reporting_devices) == (b.d1, "outside", 3, 3)
    assert health.mean_accuracy == pytest.approx(0.85)
    assert 0.001 < health.latency_p50_seconds <= 0.0025

    b.put(view_json(b.d1, b.d2, weight=5.0, generation=2), b.v2)
    assert b.gateway.summary(FLEET).health == [], "reports about the previous generation no longer count"
    b.clock.advance(60.0 * 1.25 + 1)
    assert b.gateway.summary(FLEET).devices == {}, "devices silent for longer than the window are gone"
