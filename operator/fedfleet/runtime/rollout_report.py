"""The end of an embedded rollout: the summary printed on stdout, `report.json` (the outcome and the whole
timeline) and `report.png` (the weight and the share of devices running the candidate over time, and the
on-device accuracy of each version over time). Both files are written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedfleet.persist.atomic import atomic_write_text, atomic_writer
from fedfleet.runtime.rollout import EmbeddedRollout, RolloutOutcome
from fedfleet.runtime.rollout_display import clock_text
from fedfleet.runtime.rollout_timeline import CANDIDATE, STABLE, Timeline

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
_OUTCOME_WORDS = {0: "healthy", 1: "aborted", 3: "stuck"}


def report_json(run: EmbeddedRollout, outcome: RolloutOutcome) -> dict[str, Any]:
    state = run.controller.state
    totals = run.fleet.totals()
    return {
        "rollout": run.rollout.metadata.name,
        "outcome": _OUTCOME_WORDS.get(outcome.exit_code, str(outcome.exit_code)),
        "exit_code": outcome.exit_code,
        "phase": outcome.phase.value,
        "reason": outcome.reason,
        "message": outcome.message,
        "simulated_seconds": outcome.simulated_seconds,
        "wall_seconds": round(outcome.wall_seconds, 3),
        "weight": state.weight,
        "step": state.step_index,
        "steps": len(run.rollout.spec.steps),
        "candidate": {"digest": run.inputs.candidate.digest, "source": run.inputs.candidate.source},
        "stable": {"digest": run.inputs.stable.digest, "source": run.inputs.stable.source},
        "fleet_key": run.key.key_id,
        "devices": run.settings.devices,
        "seed": run.settings.seed,
        "notes": list(run.inputs.notes),
        "device_totals": {
            "downloads": totals.stats.downloads,
            "activations": totals.stats.activations,
            "rollbacks": totals.stats.rollbacks,
            "refused": dict(totals.stats.refused),
            "health_reports": totals.stats.health_reports,
            "stopped": len(totals.errors),
        },
        **run.timeline.to_json(),
    }


def write_reports(run: EmbeddedRollout, outcome: RolloutOutcome, out: Path) -> tuple[Path, Path]:
    json_path, png_path = out / REPORT_JSON, out / REPORT_PNG
    atomic_write_text(json_path, json.dumps(report_json(run, outcome), indent=1) + "\n")
    plot_timeline(png_path, run.timeline, f"rollout {run.rollout.metadata.name}: {outcome.phase.value}")
    return json_path, png_path


def render_summary(run: EmbeddedRollout, outcome: RolloutOutcome) -> str:
    devices = outcome.devices
    word = _OUTCOME_WORDS.get(outcome.exit_code, "ended")
    lines = [
        f"rollout {run.rollout.metadata.name}: {word}, {outcome.phase.value} ({outcome.reason}) after "
        f"{clock_text(outcome.simulated_seconds)} simulated ({outcome.wall_seconds:.1f}s wall)"
    ]
    if outcome.message:
        lines.append(f"  {outcome.message}")
    online = devices.candidate + devices.stable + devices.other
    lines.append(
        f"  devices online: {devices.candidate} on the candidate, {devices.stable} on stable"
        + (f", {devices.other} without a model" if devices.other else "")
        + f" (of {online}); {devices.offline} offline"
    )
    if outcome.exit_code == 0 and devices.offline:
        lines.append(f"  the {devices.offline} offline devices take the new stable version when they check in again")
    elif devices.offline_candidate:
        lines.append(
            f"  {devices.offline_candidate} offline devices left while on the candidate: they return to the stable "
            "version when they check in again"
        )
    by_metric: dict[str, dict[str, int]] = {}
    for m in run.timeline.measurements:
        by_metric.setdefault(m.metric, {})
        by_metric[m.metric][m.phase] = by_metric[m.metric].get(m.phase, 0) + 1
    if by_metric:
        parts = [
            f"{metric} " + ", ".join(f"{n} {phase.lower()}" for phase, n in sorted(phases.items()))
            for metric, phases in sorted(by_metric.items())
        ]
        lines.append("  measurements: " + "; ".join(parts))
    totals = run.fleet.totals().stats
    refused = ", ".join(f"{n} {reason}" for reason, n in sorted(totals.refused.items())) or "none"
    lines.append(
        f"  devices did {totals.downloads} downloads, {totals.activations} activations ({totals.rollbacks} "
        f"rollbacks without a download), {totals.health_reports} health reports; refused: {refused}"
    )
    return "\n".join(lines)


def plot_timeline(path: Path, timeline: Timeline, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    points = timeline.points
    minutes = [p.t / 60 for p in points]
    fig, (weight_ax, acc_ax) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    weight_ax.step(minutes, [p.weight for p in points], where="post", label="weight (controller)", color="tab:blue")
    shares = [(m, 100 * share) for m, p in zip(minutes, points, strict=True) if (share := p.devices.share) is not None]
    weight_ax.plot(
        [s[0] for s in shares], [s[1] for s in shares], ".", ms=3, color="tab:orange", label="devices on it (counted)"
    )
    weight_ax.set_ylabel("candidate (% of devices)")
    weight_ax.set_ylim(-3, 103)
    weight_ax.set_title(title)
    weight_ax.grid(alpha=0.3)
    weight_ax.legend(loc="upper left")

    for label, color in ((CANDIDATE, "tab:orange"), (STABLE, "tab:blue")):
        series = [(m, 100 * p.accuracy[label]) for m, p in zip(minutes, points, strict=True) if label in p.accuracy]
        if series:
            acc_ax.plot([s[0] for s in series], [s[1] for s in series], "-", color=color, label=label)
    acc_ax.set_ylabel("on-device accuracy (%)")
    acc_ax.set_xlabel("simulated minutes")
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(loc="lower right")
    for transition in timeline.transitions:
        if transition.type == "Warning" or transition.reason == "RolloutCompleted":
            for ax in (weight_ax, acc_ax):
                ax.axvline(transition.t / 60, color="tab:red" if transition.type == "Warning" else "tab:green", lw=1)
    with atomic_writer(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
