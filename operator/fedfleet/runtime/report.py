"""The end-of-run report: the summary (engine.journal writes summary.json) for the terminal, and a PNG plot
of the rounds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedfleet.engine.records import RoundRecord
from fedfleet.persist.atomic import atomic_writer


def render_summary(summary: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    return (
        f"job {summary['job']}: {summary['rounds']} rounds ({summary['rounds_failed']} failed), "
        f"final accuracy {pct(summary['final_accuracy'])}, best {pct(summary['best_accuracy'])}"
        f" at round {summary['best_round']}; participants {summary['participants']}, dropped {summary['dropped']},"
        f" surplus {summary.get('surplus', 0)},"
        f" late {summary['late']}, churn {100 * summary['churn_rate']:.1f}%;"
        f" {summary['bytes_received'] / 1e6:.1f} MB up, {summary['bytes_sent'] / 1e6:.1f} MB down;"
        f" {summary['wall_seconds']:.1f}s"
        + (f"; ε spent {summary['epsilon']:.3f}" if summary.get("epsilon") is not None else "")
        + (f"\nstopped early: {summary['stop_reason']}" if summary.get("stop_reason") else "")
    )


def plot_rounds(path: Path, records: Sequence[RoundRecord], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    rounds = [r.round for r in records]
    fig, (acc_ax, part_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, constrained_layout=True)
    evaluated = [(r.round, r.accuracy) for r in records if r.accuracy is not None]
    if evaluated:
        acc_ax.plot([e[0] for e in evaluated], [100 * (e[1] or 0) for e in evaluated], label="server test split")
    federated = [(r.round, r.federated_accuracy) for r in records if r.federated_accuracy is not None]
    if federated:
        acc_ax.plot([f[0] for f in federated], [100 * (f[1] or 0) for f in federated], "o", label="federated")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title(title)
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(loc="lower right")

    completed = [r.participants for r in records]
    dropped = [r.dropped for r in records]
    late = [r.late for r in records]
    part_ax.bar(rounds, completed, label="aggregated", color="tab:green")
    part_ax.bar(rounds, late, bottom=completed, label="late", color="tab:orange")
    lost_top = [c + lt for c, lt in zip(completed, late, strict=True)]
    part_ax.bar(rounds, dropped, bottom=lost_top, label="dropped", color="tab:red")
    # Over-selection's spares: invited, not needed once the round filled; not a loss.
    part_ax.bar(
        rounds,
        [r.surplus for r in records],
        bottom=[t + d for t, d in zip(lost_top, dropped, strict=True)],
        label="surplus",
        color="tab:gray",
    )
    # Headroom above the tallest bar so the legend never covers it.
    part_ax.set_ylim(0, 1.35 * max((r.invited for r in records), default=1))
    part_ax.set_xlabel("round")
    part_ax.set_ylabel("devices")
    part_ax.legend(loc="upper right", ncols=4)
    with atomic_writer(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
