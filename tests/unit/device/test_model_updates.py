"""The device SDK's model updater: it activates only what a trusted key signed, refuses and reports anything
else while staying on what it ran, swaps back to the previous model without a download, resumes a broken
download at the offset it has, lets the newest assignment win, and reports health for exactly the version it
runs. Most tests use a small fake link that serves real artifact bytes and can misbehave on cue; the last ones
run over the in-process link into a real fleet gateway. The artifacts, signatures, verification and evaluation
are all real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedfleet.device.artifact_download import DownloadLimits
from fedfleet.device.model_health import HeldOutEvaluator
from fedfleet.device.model_updates import (
    LOAD_ERROR,
    CheckInAnswer,
    HealthReport,
    LinkError,
    ModelOffer,
    ModelUpdater,
)
from fedfleet.device.retry import Backoff
from fedfleet.models.artifact import decode
from fedfleet.models.artifact_torch import to_module
from fedfleet.models.evaluation import evaluate
from fedfleet.security.signing import SigningKey, TrustedKeys
from fedfleet.sim.clock import ManualClock
from fedfleet.sim.gateway_link import GatewayLink
from rollout_support import FleetHarness, artifact_bytes, offer_for, run_async, signed_release

#: A safety net for waits in these tests, never what they measure: every wait ends on an event long before.
PATIENCE = 60.0


class FakeLink:
    """A gateway reduced to a dict of artifacts and one current assignment, with switches to misbehave."""

    def __init__(self, store: dict[str, bytes], chunk_bytes: int = 4096) -> None:
        self.store = store
        self.chunk_bytes = chunk_bytes
        self.current: ModelOffer | None = None
        self.downloads: list[tuple[str, int]] = []  # (digest, offset) of each download call
        self.reports: list[HealthReport] = []
        self.check_ins: list[str | None] = []  # the running version each check-in announced
        self.cut_first_download_at: int | None = None  # the first download call stops after this many bytes...
        self.cut_by_breaking = False  # ...by breaking the connection instead of ending the stream
        self.held: asyncio.Event | None = None  # when set: downloads pause after their first chunk until it is set
        self.held_download_started = asyncio.Event()
        self.failing_reports = 0  # report calls that fail as a lost connection would
        self.throttled_reports = 0  # report calls refused as too early after the last one
        self.refusing = False  # every call refused for good (an expired token)
        self.report_gate: asyncio.Event | None = None  # when set: report calls wait until it is set
        self._watchers: list[asyncio.Queue[ModelOffer | None]] = []

    def assign(self, offer: ModelOffer | None) -> None:
        self.current = offer
        for queue in self._watchers:
            queue.put_nowait(offer)

    async def check_in(self, attributes: Mapping[str, str], running: str | None) -> CheckInAnswer:
        if self.refusing:
            raise LinkError("UNAUTHENTICATED: device token expired", transient=False, fatal=True)
        self.check_ins.append(running)
        return CheckInAnswer(self.current, 3600.0)

    async def watch(self, attributes: Mapping[str, str]) -> AsyncIterator[ModelOffer | None]:
        queue: asyncio.Queue[ModelOffer | None] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            yield self.current
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(queue)

    async def download(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        self.downloads.append((digest, offset))
        data = self.store[digest]
        end = len(data)
        if self.cut_first_download_at is not None and len(self.downloads) == 1:
            end = self.cut_first_download_at
        for start in range(offset, end, self.chunk_bytes):
            yield data[start : min(end, start + self.chunk_bytes)]
            if self.held is not None and not self.held.is_set():
                self.held_download_started.set()
                await self.held.wait()
        if end < len(data) and self.cut_by_breaking:
            raise LinkError("UNAVAILABLE: connection reset", transient=True)

    async def report_health(self, report: HealthReport, attributes: Mapping[str, str]) -> None:
        if self.report_gate is not None:
            await self.report_gate.wait()
        if self.failing_reports > 0:
            self.failing_reports -= 1
            raise LinkError("UNAVAILABLE: connection reset", transient=True)
        if self.throttled_reports > 0:
            self.throttled_reports -= 1
            raise LinkError("RESOURCE_EXHAUSTED: too soon", transient=False, reason="report_too_frequent")
        self.reports.append(report)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def held_out() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.random((16, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, size=16)


def updater_for(
    link: FakeLink, key: SigningKey, held_out: tuple[np.ndarray, np.ndarray], **kwargs: object
) -> ModelUpdater:
    x, y = held_out
    settings: dict[str, object] = {
        "attributes": {"os": "android"},
        "trusted": TrustedKeys([key.public()]),
        "evaluator": HeldOutEvaluator(x, y),
        "clock": ManualClock(),
        # Reconnects and retries wait a millisecond: no test here waits out a real backoff.
        "backoff": Backoff(initial=0.001, maximum=0.001),
    }
    settings.update(kwargs)
    return ModelUpdater(link, **settings)  # type: ignore[arg-type]


async def until(condition: object, what: str) -> None:
    """Wait (on events, polling each loop turn) until `condition()` holds; PATIENCE is only a safety net."""

    async def poll() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.001)

    try:
        await asyncio.wait_for(poll(), PATIENCE)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


@run_async
async def test_a_signed_artifact_is_activated_and_its_health_reported_for_that_version(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    data = artifact_bytes(seed=1)
    offer = offer_for(data, key)
    link = FakeLink({offer.version: data})
    updater = updater_for(link, key, held_out)

    await updater.apply(offer)

    assert updater.running_version == offer.version
    assert link.check_ins == [offer.version]  # it told the gateway what it runs now
    [report] = link.reports
    assert report.version == offer.version and report.failure is None
    expected = evaluate(to_module(decode(data)), *held_out)
    assert report.measurement is not None
    assert report.measurement.accuracy == pytest.approx(expected.accuracy)
    assert report.measurement.loss == pytest.approx(expected.loss)
    assert report.measurement.examples == 16
    # The module the app predicts with is the artifact's model.
    x = held_out[0][:4]
    np.testing.assert_allclose(
        updater.running.module(__import__("torch").from_numpy(x)).detach().numpy(),  # type: ignore[union-attr]
        to_module(decode(data))(__import__("torch").from_numpy(x)).detach().numpy(),
        rtol=1e-6,
    )
    # The same assignment again changes nothing and reports nothing new.
    await updater.apply(offer)
    assert len(link.reports) == 1 and updater.stats.downloads == 1


def _tampered(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[-5] ^= 0x01  # one bit of one weight
    return bytes(flipped)


@pytest.mark.parametrize(
    "attack",
    ["tampered bytes", "untrusted key", "altered record", "architecture lie", "larger than signed"],
)
@run_async
async def test_a_bad_artifact_is_refused_and_reported_and_the_device_stays_on_what_it_ran(
    attack: str, key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    stable_data, candidate_data = artifact_bytes(seed=1), artifact_bytes(seed=2)
    stable = offer_for(stable_data, key, role="stable")
    candidate = offer_for(candidate_data, key)
    store = {stable.version: stable_data, candidate.version: candidate_data}
    expected_reason = {
        "tampered bytes": "digest_mismatch",
        "untrusted key": "untrusted_key",
        "altered record": "bad_signature",
        "architecture lie": "architecture_mismatch",
        "larger than signed": "size_mismatch",
    }[attack]
    if attack == "tampered bytes":
        store[candidate.version] = _tampered(candidate_data)  # the gateway's copy was changed after signing
    elif attack == "untrusted key":
        candidate = offer_for(candidate_data, SigningKey.generate())
    elif attack == "altered record":
        assert candidate.release is not None
        forged = replace(candidate.release.record, rollout="default/other")
        candidate = replace(candidate, release=replace(candidate.release, record=forged))
    elif attack == "architecture lie":
        candidate = offer_for(candidate_data, key, architecture="2nn")
    else:
        # The gateway streams more than the signed size: the device stops at the size it was promised.
        signed = signed_release(candidate_data, key, size=len(candidate_data) - 100)
        candidate = replace(candidate, release=signed)
    link = FakeLink(store)
    updater = updater_for(link, key, held_out)
    await updater.apply(stable)
    downloads_before = len(link.downloads)

    await updater.apply(candidate)

    assert updater.running_version == stable.version
    assert updater.stats.refused == {expected_reason: 1}
    failure_reports = [r for r in link.reports if r.failure is not None]
    assert [(r.version, r.failure.reason) for r in failure_reports] == [(candidate.version, expected_reason)]  # type: ignore[union-attr]
    if attack in ("untrusted key", "altered record"):
        assert len(link.downloads) == downloads_before  # the signature is checked before a byte is fetched
    # Offered again (a reconnect, a periodic check-in): no second download, no second report.
    downloads_after = len(link.downloads)
    await updater.apply(candidate)
    assert len(link.downloads) == downloads_after
    assert len([r for r in link.reports if r.failure is not None]) == 1
    assert updater.running_version == stable.version


@run_async
async def test_a_release_signed_again_after_a_refusal_is_a_new_chance(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    data = artifact_bytes(seed=2)
    old_key, new_key = SigningKey.generate(), key
    link = FakeLink({offer_for(data, key).version: data})
    updater = updater_for(link, key, held_out)
    await updater.apply(offer_for(data, old_key))  # signed with a key the device does not trust (yet)
    assert updater.running_version is None

    await updater.apply(offer_for(data, new_key))  # the operator signed it again with a trusted key

    assert updater.running_version == offer_for(data, key).version


@run_async
async def test_rollback_to_the_previous_version_swaps_without_a_download(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    stable_data, candidate_data = artifact_bytes(seed=1), artifact_bytes(seed=2)
    stable, candidate = offer_for(stable_data, key, role="stable"), offer_for(candidate_data, key)
    link = FakeLink({stable.version: stable_data, candidate.version: candidate_data})
    updater = updater_for(link, key, held_out)
    await updater.apply(stable)
    await updater.apply(candidate)
    stable_module = updater.previous_version
    assert updater.running_version == candidate.version and stable_module == stable.version
    downloads = list(link.downloads)

    await updater.apply(replace(stable, revision=2))  # the rollout aborted: back to stable

    assert updater.running_version == stable.version
    assert link.downloads == downloads  # nothing fetched
    assert updater.stats.rollbacks == 1
    assert updater.previous_version == candidate.version  # kept in turn: a retry is a swap too
    assert link.check_ins[-1] == stable.version
    assert [r.version for r in link.reports if r.measurement is not None] == [
        stable.version,
        candidate.version,
        stable.version,
    ]


@pytest.mark.parametrize("cut", ["stream ends early", "connection breaks"])
@run_async
async def test_a_truncated_download_resumes_at_the_offset_it_has(
    cut: str, key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    data = artifact_bytes(seed=4)
    offer = offer_for(data, key)
    link = FakeLink({offer.version: data}, chunk_bytes=1000)
    link.cut_first_download_at = 12_000
    link.cut_by_breaking = cut == "connection breaks"
    updater = updater_for(link, key, held_out)

    await updater.apply(offer)

    assert link.downloads == [(offer.version, 0), (offer.version, 12_000)]
    assert updater.running_version == offer.version
    assert updater.stats.resumed_downloads == 1 and updater.stats.downloaded_bytes == len(data)


@run_async
async def test_a_download_that_makes_no_progress_gives_up_and_is_not_blamed_on_the_artifact(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    data = artifact_bytes(seed=4)
    offer = offer_for(data, key)
    link = FakeLink({offer.version: data[:5000]})  # the gateway only ever has the first 5000 bytes
    updater = updater_for(link, key, held_out, limits=DownloadLimits(attempts=3), clock=None)

    await updater.apply(offer)

    assert updater.running_version is None
    assert link.downloads == [(offer.version, 0), (offer.version, 5000), (offer.version, 5000), (offer.version, 5000)]
    assert updater.stats.unavailable == 1 and updater.stats.refused == {}
    assert link.reports == []  # a flaky link is not an activation failure


@run_async
async def test_an_artifact_larger_than_the_device_takes_is_refused_before_downloading(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    data = artifact_bytes(seed=4)
    offer = offer_for(data, key)
    link = FakeLink({offer.version: data})
    updater = updater_for(link, key, held_out, limits=DownloadLimits(max_bytes=len(data) - 1))

    await updater.apply(offer)

    assert link.downloads == []
    assert [(r.version, r.failure.reason) for r in link.reports] == [(offer.version, "size_mismatch")]  # type: ignore[union-attr]


@run_async
async def test_a_model_that_cannot_run_on_the_device_data_is_refused_as_a_load_error(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    stable_data = artifact_bytes(seed=1)
    small_images = artifact_bytes(seed=2, image_shape=(1, 8, 8))  # signed and valid, but for 8x8 digits
    stable, candidate = offer_for(stable_data, key, role="stable"), offer_for(small_images, key)
    link = FakeLink({stable.version: stable_data, candidate.version: small_images})
    updater = updater_for(link, key, held_out)
    await updater.apply(stable)

    await updater.apply(candidate)

    assert updater.running_version == stable.version
    assert [(r.version, r.failure.reason) for r in link.reports if r.failure] == [(candidate.version, LOAD_ERROR)]
    assert link.check_ins[-1] == stable.version


@run_async
async def test_the_device_follows_its_assignment_and_the_newest_one_wins_over_a_download(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    stable_data, candidate_data = artifact_bytes(seed=1), artifact_bytes(seed=2)
    stable, candidate = offer_for(stable_data, key, role="stable"), offer_for(candidate_data, key)
    link = FakeLink({stable.version: stable_data, candidate.version: candidate_data}, chunk_bytes=2000)
    link.assign(stable)
    updater = updater_for(link, key, held_out)
    stop = asyncio.Event()
    running = asyncio.create_task(updater.run(stop))
    try:
        await until(lambda: updater.running_version == stable.version, "the device runs stable")
        link.held = asyncio.Event()
        link.assign(candidate)
        await asyncio.wait_for(link.held_download_started.wait(), PATIENCE)  # the candidate is on its way...

        link.assign(replace(stable, revision=2))  # ...when the rollout aborts

        await until(lambda: updater.assigned is not None and updater.assigned.revision == 2, "the abort arrives")
        assert updater.running_version == stable.version
        link.held.set()  # the stalled stream would go on now; the device must not be listening any more
        link.held = None
        await asyncio.sleep(0.05)
        assert updater.running_version == stable.version
        link.assign(candidate)  # retried: the download resumes where it stopped
        await until(lambda: updater.running_version == candidate.version, "the device runs the candidate")
        assert link.downloads[-1] == (candidate.version, 2000)
        assert updater.stats.activations == 2  # stable, then the candidate: never the candidate in between
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)


@run_async
async def test_a_new_version_arriving_as_a_report_on_the_old_one_ends_is_not_lost(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """A newer offer of the running version waits for the report in flight; if another version is assigned in
    the same moment that report ends, the waiting offer is older than it and must not win (it once did: the
    device stayed on the old version until its next check-in)."""
    stable_data, candidate_data = artifact_bytes(seed=1), artifact_bytes(seed=2)
    stable, candidate = offer_for(stable_data, key, role="stable"), offer_for(candidate_data, key)
    link = FakeLink({stable.version: stable_data, candidate.version: candidate_data})
    link.report_gate = asyncio.Event()
    link.assign(stable)
    updater = updater_for(link, key, held_out)
    stop = asyncio.Event()
    running = asyncio.create_task(updater.run(stop))
    try:
        await until(lambda: updater.running_version == stable.version, "the device runs stable")
        link.assign(replace(stable, generation=2))  # a new view, the same version: it waits for the report
        await until(lambda: updater.assigned is not None and updater.assigned.generation == 2, "the new view heard")
        link.report_gate.set()  # the report in flight ends...
        link.assign(candidate)  # ...as the candidate is assigned
        await until(lambda: updater.running_version == candidate.version, "the device runs the candidate")
        assert updater.assigned is not None and updater.assigned.version == candidate.version
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)


@run_async
async def test_a_report_lost_with_the_connection_is_sent_after_reconnecting(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    data = artifact_bytes(seed=1)
    offer = offer_for(data, key, role="stable")
    link = FakeLink({offer.version: data})
    link.assign(offer)
    link.failing_reports = 1
    updater = updater_for(link, key, held_out, clock=None)  # the reconnect backs off 1 ms of real time
    stop = asyncio.Event()
    running = asyncio.create_task(updater.run(stop))
    try:
        await until(lambda: len(link.reports) == 1, "the report arrives")
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)
    assert [r.version for r in link.reports] == [offer.version]
    assert updater.stats.reconnects >= 1 and updater.stats.downloads == 1


@run_async
async def test_a_device_refused_for_good_stops_with_the_reason(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    link = FakeLink({})
    link.refusing = True
    updater = updater_for(link, key, held_out)
    with pytest.raises(LinkError, match="token expired"):
        await asyncio.wait_for(updater.run(), PATIENCE)


@run_async
async def test_no_model_for_the_device_yet_leaves_it_as_it_is(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    data = artifact_bytes(seed=1)
    # Outside every rollout: the fleet's stable version, released (signed) by the rollout that made it stable.
    offer = replace(offer_for(data, key, role="outside"), rollout="", revision=0)
    link = FakeLink({offer.version: data})
    updater = updater_for(link, key, held_out)
    stop = asyncio.Event()
    running = asyncio.create_task(updater.run(stop))
    try:
        await until(lambda: len(link.check_ins) == 1, "the check-in")
        for _ in range(10):
            await asyncio.sleep(0)
        assert updater.running_version is None and link.downloads == []
        link.assign(offer)  # the first model is published
        await until(lambda: updater.running_version == offer.version, "the first model runs")
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)


@run_async
async def test_health_is_reported_once_per_generation_and_a_throttled_report_is_tried_again(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    data = artifact_bytes(seed=1)
    offer = offer_for(data, key, role="stable")
    link = FakeLink({offer.version: data})
    updater = updater_for(link, key, held_out)
    await updater.apply(offer)
    await updater.apply(offer)  # the same generation again (a periodic check-in): nothing new to say
    assert len(link.reports) == 1

    link.throttled_reports = 1
    await updater.apply(replace(offer, generation=2))  # a new view: the gate counts this generation's reports
    assert len(link.reports) == 1 and updater.stats.reports_dropped == 1
    await updater.apply(replace(offer, generation=2))  # the next check-in's answer: this time it is taken
    assert [r.version for r in link.reports] == [offer.version, offer.version]
    assert updater.stats.downloads == 1


@run_async
async def test_with_a_report_period_the_device_reports_again_at_the_first_check_in_of_each_period(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    data = artifact_bytes(seed=1)
    offer = offer_for(data, key, role="stable")
    link = FakeLink({offer.version: data})
    clock = ManualClock()
    updater = updater_for(link, key, held_out, clock=clock, report_every_seconds=30.0)
    await updater.apply(offer)
    await clock.advance(29.0)
    await updater.apply(offer)  # a check-in within the same period: nothing new
    assert len(link.reports) == 1
    await clock.advance(1.0)
    await updater.apply(offer)  # the first check-in of the next period
    assert [r.version for r in link.reports] == [offer.version, offer.version]
    with pytest.raises(ValueError, match="report_every_seconds must be None or a finite number >= 1"):
        updater_for(link, key, held_out, report_every_seconds=0.5)


# ---- over the in-process link into a real fleet gateway -------------------------------------------------


class CountingLink(GatewayLink):
    """The in-process link, counting the downloads it starts (the gateway does not say)."""

    downloads = 0

    def download(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        self.downloads += 1
        return super().download(digest, offset)


def failures_counted(harness: FleetHarness, version: str, reason: str) -> float:
    value = harness.registry.get_sample_value(
        "fedfleet_gateway_activation_failures_total", {"fleet": "default", "version": version, "reason": reason}
    )
    return value or 0.0


@run_async
async def test_over_a_real_gateway_a_tampered_candidate_is_refused_counted_and_rolled_back_without_download(
    tmp_path: Path, key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    harness = FleetHarness.in_process(tmp_path, key)
    stable = harness.publish(artifact_bytes(seed=1))
    good = harness.publish(artifact_bytes(seed=2))
    bad = harness.publish(artifact_bytes(seed=3))
    harness.tamper(bad)
    link = CountingLink(harness.gateway, "default", "dev-00007")
    updater = updater_for(link, key, held_out)  # type: ignore[arg-type]
    stop = asyncio.Event()
    running = asyncio.create_task(updater.run(stop))
    try:
        harness.set_view(stable=stable, candidate=good, weight=100.0)  # every device is in the canary
        await until(lambda: updater.running_version == good, "the device runs the good candidate")
        assert updater.previous_version is None  # it had nothing before: its first model was the candidate

        harness.set_view(stable=stable, candidate=good, weight=0.0)  # aborted
        await until(lambda: updater.running_version == stable, "the device runs stable")
        harness.set_view(stable=stable, candidate=good, weight=100.0)  # retried: back to the candidate
        await until(lambda: updater.running_version == good, "the device runs the candidate again")
        assert link.downloads == 2  # the candidate and stable once each; the return was a swap
        assert updater.stats.rollbacks == 1

        harness.set_view(stable=good, candidate=bad, weight=100.0, revision=2)  # a tampered candidate
        await until(lambda: failures_counted(harness, bad, "digest_mismatch") == 1, "the gateway counts the refusal")
        assert updater.running_version == good  # it stays on what it ran
        health = {h.version: h for h in harness.gateway.summary("default").health}
        assert health[bad].activation_failures == 1 and health[bad].reports == 0
    finally:
        stop.set()
        await asyncio.wait_for(running, PATIENCE)


@run_async
async def test_a_device_that_stops_while_following_leaves_no_task_behind(
    key: SigningKey, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    data = artifact_bytes(seed=1)
    offer = offer_for(data, key, role="stable")
    link = FakeLink({offer.version: data})
    link.assign(offer)
    updater = updater_for(link, key, held_out)
    stop = asyncio.Event()
    running = asyncio.create_task(updater.run(stop))
    await until(lambda: updater.running_version == offer.version and link.reports, "the device runs and reported")
    stop.set()  # as when a simulated device's offline window starts: it is cut off while waiting for news
    await asyncio.wait_for(running, PATIENCE)
    for _ in range(3):
        await asyncio.sleep(0)  # cancelled tasks finish on their next turn
    left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
    assert left == []
