"""The lines `fedfleet rollout` prints: one per transition of the step machine and one per measurement while it
runs (with the devices per version, as the devices report it), and the summary at the end."""

from __future__ import annotations

from collections.abc import Sequence

from fedfleet.runtime.rollout_timeline import MeasurementLine, Transition


def clock_text(seconds: float) -> str:
    """Simulated time since the start, as m:ss."""
    whole = int(seconds)
    return f"{whole // 60:d}:{whole % 60:02d}"


def short(digest: str) -> str:
    return digest[:19] + "…" if len(digest) > 19 else digest


def transition_line(item: Transition) -> str:
    mark = "!" if item.type == "Warning" else "·"
    return f"{clock_text(item.t):>6} {mark} {item.reason}: {item.message}  [{item.devices.describe()}]"


def measurement_line(item: MeasurementLine) -> str:
    figures = []
    if item.value is not None:
        figures.append(f"result {item.value:.4g}")
    if item.baseline is not None:
        figures.append(f"baseline {item.baseline:.4g}")
    figures.append(f"{item.reporting_devices} reporting")
    kind = "background " if item.background else ""
    return (
        f"{clock_text(item.t):>6}   measured {kind}{item.metric}: {item.phase} ({', '.join(figures)});"
        f" run {item.run_phase}  [{item.devices.describe()}]"
    )


def header_lines(
    name: str, candidate: str, stable: str, devices: int, key_id: str, steps: int, notes: Sequence[str]
) -> list[str]:
    lines = [
        f"rollout {name}: {steps} steps, {devices} simulated devices, fleet key {key_id} (fresh for this run)",
        f"  candidate {candidate}",
        f"  stable    {stable}",
    ]
    lines += [f"  note: {note}" for note in notes]
    return lines
