"""The embedded rollout (`fedfleet rollout`) end to end in one process: the real fleet gateway core with its
artifact store on disk, the controller's step machine and analyses on the gateway's own health figures, a
fresh Ed25519 fleet key, and simulated devices running the real device SDK, which download, verify, activate
and evaluate real torch models (trained here on MNIST 5k) on their own held-out examples. Time is simulated,
so nothing depends on how fast the machine is. The tests drive the runtime tick by tick and count what the
devices themselves run, not what the controller believes they run."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from embedded_rollout_support import accuracy_on_test_split, degraded_copy, rollout_manifest, train_job_model
from fedfleet.api.manifest import load_rollout
from fedfleet.api.rollout_status import RolloutPhase, RolloutReason
from fedfleet.persist.run_dir import RunPaths
from fedfleet.rollout.selector import DeviceSelector
from fedfleet.runtime.rollout import EXIT_STUCK, EmbeddedRollout, RolloutSettings
from fedfleet.runtime.rollout_inputs import resolve_inputs
from fedfleet.sim.rollout_devices import OfflineWindows
from rollout_support import run_async

NO_WINDOWS = OfflineWindows()  # nobody leaves on a schedule: the test sends devices away itself


@dataclass(frozen=True)
class Models:
    good: Path  # trained on the job's training split
    bad: Path  # the same model with noise added to every weight


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("models")
    good = train_job_model(root / "trained")
    bad = degraded_copy(good, root / "degraded" / "model.pt")
    # The degraded copy sits in a run directory of the same job too: devices judge both on its test split.
    shutil.copy(RunPaths(good.parent).manifest, RunPaths(bad.parent).manifest)
    return Models(good, bad)


def embedded(
    manifest: Path, model: Path, out: Path, settings: RolloutSettings, stable: Path | None = None
) -> EmbeddedRollout:
    rollout = load_rollout(manifest)
    return EmbeddedRollout(rollout, resolve_inputs(rollout, model, stable), out, settings)


def sigma_points(weight: float, devices: int) -> float:
    """The standard deviation, in percentage points, of the share of `devices` devices in a canary of
    `weight` percent: each device is in it with probability weight/100, by a keyed hash of its id."""
    w = weight / 100
    return 100 * math.sqrt(w * (1 - w) / devices)


ANDROID = DeviceSelector.from_dict({"matchLabels": {"os": "android"}})


@run_async
async def test_a_good_candidate_steps_to_healthy_and_the_devices_follow_the_weight(
    models: Models, tmp_path: Path
) -> None:
    # 800 devices, 70% of them android and about 90% of those online: about 500 selected devices online, for
    # which ±2 points is more than 3σ at 1% and 2% (asserted below for the count at each step).
    steps = "[{setWeight: 1}, {analysis: {metrics: [accuracy]}}, {setWeight: 2}, {analysis: {metrics: [accuracy]}}, {setWeight: 100}]"  # noqa: E501
    manifest = rollout_manifest(tmp_path / "rollout.yaml", steps, selector="{matchLabels: {os: android}}")
    run = embedded(manifest, models.good, tmp_path / "out", RolloutSettings(devices=800, seed=3, max_minutes=10))
    candidate, stable = run.inputs.candidate.digest, run.inputs.stable.digest
    selected = {d.device_id for d in run.fleet.devices if ANDROID.matches(d.attributes)}
    ever_on_candidate: set[str] = set()
    shares: dict[int, list[float]] = {}

    def check_the_devices() -> None:
        weight = run.controller.state.weight
        running = {device_id: u.running_version for device_id, u in run.fleet.updaters.items()}
        went_back = {d for d in ever_on_candidate if running[d] == stable}
        assert not went_back, f"ran the candidate, then stable again: {sorted(went_back)[:5]}"
        ever_on_candidate.update(d for d, version in running.items() if version == candidate)
        here = [d for d in selected if d in run.fleet.online()]
        on_candidate = sum(running[d] == candidate for d in here)
        share = 100 * on_candidate / len(here)
        if weight == 100:
            assert all(running[d] == candidate for d in run.fleet.online())  # outside the selector too, now
            return
        assert not any(running[d] == candidate for d in running if d not in selected)  # outside: stable
        if weight > 0:
            assert 3 * sigma_points(weight, len(here)) <= 2.0, f"too few devices for the bound: {len(here)}"
            assert abs(share - weight) <= 2.0, f"weight {weight}%, but {share:.2f}% of {len(here)} devices"
            shares.setdefault(weight, []).append(share)
        # The runtime's own count (for the display and report.json) says the same as this one.
        point = run.timeline.points[-1]
        assert (point.devices.selected_online, point.devices.selected_candidate) == (len(here), on_candidate)

    await run.start()
    try:
        await run.tick(advance=False)
        check_the_devices()
        while not run.finished:
            await run.tick()
            check_the_devices()
    finally:
        await run.close()

    state = run.controller.state
    assert (state.phase, state.reason) == (RolloutPhase.HEALTHY, RolloutReason.ROLLOUT_COMPLETED)
    assert state.stable == candidate
    assert sorted(shares) == [1, 2]  # both canary steps were seen by the devices, each for several ticks
    assert all(len(seen) >= 3 for seen in shares.values())
    accuracy = [m for m in run.timeline.measurements if m.metric == "accuracy"]
    assert [m.phase for m in accuracy] == ["Successful"] * 4
    assert all(m.value is not None and m.baseline is not None and m.value > m.baseline for m in accuracy)
    assert run.outcome().devices.candidate == len(run.fleet.online())


@run_async
async def test_a_bad_candidate_fails_the_first_analysis_and_every_device_goes_back_to_stable(
    models: Models, tmp_path: Path
) -> None:
    assert accuracy_on_test_split(models.bad) < accuracy_on_test_split(models.good) - 0.2  # really worse
    steps = "[{setWeight: 10}, {analysis: {metrics: [accuracy]}}, {setWeight: 50}, {analysis: {metrics: [accuracy]}}, {setWeight: 100}]"  # noqa: E501
    manifest = rollout_manifest(tmp_path / "rollout.yaml", steps)
    settings = RolloutSettings(devices=200, seed=4, offline=NO_WINDOWS)
    run = embedded(manifest, models.bad, tmp_path / "out", settings, stable=models.good)
    candidate, stable = run.inputs.candidate.digest, run.inputs.stable.digest

    def running(device_id: str) -> str | None:
        return run.fleet.updater(device_id).running_version

    await run.start()
    try:
        await run.tick(advance=False)
        canaries = sorted(d for d in run.fleet.updaters if running(d) == candidate)
        assert run.controller.state.weight == 10 and len(canaries) >= 10
        away = canaries[:4]  # they leave while on the candidate, and are away when the rollout aborts
        run.fleet.go_offline(away)
        await run.settle()
        while not run.finished:
            await run.tick()
            assert run.controller.state.weight <= 10

        state = run.controller.state
        assert (state.phase, state.reason, state.weight) == (RolloutPhase.DEGRADED, RolloutReason.ANALYSIS_FAILED, 0)
        first = next(m for m in run.timeline.measurements if m.metric == "accuracy")
        assert first.phase == "Failed" and first.value is not None and first.baseline is not None
        assert first.value < first.baseline - 0.05
        assert state.step_index == 1  # aborted at the first analysis step
        assert max(point.weight for point in run.timeline.points) == 10

        online = run.fleet.online()
        assert online and not set(away) & online
        assert {running(d) for d in online} == {stable}  # every connected device is back, in that same tick
        assert {running(d) for d in away} == {candidate}  # nothing reached the devices that were away
        assert run.fleet.totals().stats.rollbacks >= len(canaries) - len(away)  # swaps, without a download

        run.fleet.come_online(away)
        await run.settle()
        assert {running(d) for d in run.fleet.updaters} == {stable}
    finally:
        await run.close()


@run_async
async def test_devices_that_report_nothing_never_get_the_candidate_promoted(models: Models, tmp_path: Path) -> None:
    steps = "[{setWeight: 10}, {analysis: {metrics: [accuracy]}}, {setWeight: 100}]"
    manifest = rollout_manifest(tmp_path / "rollout.yaml", steps)
    settings = RolloutSettings(devices=100, seed=5, silent_fraction=1.0, max_minutes=3)
    run = embedded(manifest, models.good, tmp_path / "out", settings)
    candidate, stable = run.inputs.candidate.digest, run.inputs.stable.digest

    outcome = await run.run()

    assert outcome.exit_code == EXIT_STUCK and outcome.simulated_seconds >= 180
    assert outcome.phase == RolloutPhase.PAUSED
    assert outcome.reason in (RolloutReason.ANALYSIS_INCONCLUSIVE, RolloutReason.BACKGROUND_ANALYSIS_INCONCLUSIVE)
    assert run.controller.state.stable == stable and run.controller.state.candidate == candidate
    assert max(point.weight for point in run.timeline.points) == 10
    assert outcome.devices.candidate > 0  # the silent canaries did switch: they only never said how it runs
    assert run.timeline.measurements and all(m.phase == "Inconclusive" for m in run.timeline.measurements)
    assert all("no data" in m.message for m in run.timeline.measurements)
    assert run.fleet.totals().stats.health_reports == 0


@run_async
async def test_a_tampered_artifact_is_refused_by_the_devices_and_the_gate_aborts(
    models: Models, tmp_path: Path
) -> None:
    steps = "[{setWeight: 10}, {analysis: {metrics: [accuracy]}}, {setWeight: 100}]"
    manifest = rollout_manifest(tmp_path / "rollout.yaml", steps)
    run = embedded(manifest, models.good, tmp_path / "out", RolloutSettings(devices=150, seed=6))
    candidate, stable = run.inputs.candidate.digest, run.inputs.stable.digest

    await run.start()
    try:
        run.reconcile()  # the release is signed and the weight raised; no device has acted on it yet
        release = run.controller.release
        assert release is not None and release.record.digest == candidate
        blob = run.store.root / "sha256" / candidate.removeprefix("sha256:")
        data = bytearray(blob.read_bytes())
        data[-5] ^= 0x01  # one bit of one weight, after signing: what an attacker on the gateway's volume does
        blob.chmod(0o600)
        blob.write_bytes(bytes(data))
        await run.settle()
        while not run.finished:
            await run.tick()

        state = run.controller.state
        assert (state.phase, state.reason) == (RolloutPhase.DEGRADED, RolloutReason.BACKGROUND_ANALYSIS_FAILED)
        failures = [m for m in run.timeline.measurements if m.metric == "activation-failures"]
        assert failures[-1].phase == "Failed" and failures[-1].value == 1.0  # every attempt failed
        refused = run.fleet.totals().stats.refused
        assert set(refused) == {"digest_mismatch"} and refused["digest_mismatch"] >= 10
        counted = run.gateway.metrics.registry.get_sample_value(
            "fedfleet_gateway_activation_failures_total",
            {"fleet": "default", "version": candidate, "reason": "digest_mismatch"},
        )
        assert counted == refused["digest_mismatch"]  # every refusal reached the gateway
        assert not any(u.running_version == candidate for u in run.fleet.updaters.values())  # nobody activated it
        online = run.fleet.online()
        assert online and {run.fleet.updater(d).running_version for d in online} == {stable}
    finally:
        await run.close()


@run_async
async def test_the_shipped_example_rolls_a_good_model_out_to_healthy_as_make_demo_does(
    models: Models, tmp_path: Path
) -> None:
    example = Path(__file__).parents[2] / "examples" / "rollout.yaml"
    run = embedded(example, models.good, tmp_path / "out", RolloutSettings())  # the defaults `make demo` uses

    outcome = await run.run()

    assert (outcome.exit_code, outcome.phase) == (0, RolloutPhase.HEALTHY), outcome.message
    assert run.timeline.points[0].weight == 1
    assert sorted({p.weight for p in run.timeline.points}) == [1, 5, 25, 100]
    assert {m.phase for m in run.timeline.measurements} == {"Successful"}
    assert outcome.devices.candidate > 400 and outcome.devices.stable == 0
