"""The kubectl plugin: what `status` shows, and that actions are annotations the operator can parse."""

from __future__ import annotations

from typing import Any

from fedfleet.api.rollout_actions import ACTION_ANNOTATION, Action, parse_request
from fedfleet.kubectl_plugin import Cluster, build_parser, render_status, run

ROLLOUT: dict[str, Any] = {
    "metadata": {"name": "mnist", "namespace": "ml"},
    "spec": {"steps": [{"setWeight": 5}, {"analysis": {"metrics": ["accuracy"]}}, {"setWeight": 100}]},
    "status": {
        "phase": "Progressing",
        "stepIndex": 1,
        "weight": 5,
        "stable": "sha256:" + "a" * 64,
        "candidate": "sha256:" + "b" * 64,
        "revision": 2,
        "devices": [{"version": "sha256:" + "a" * 64, "role": "stable", "count": 475}],
        "analysis": [{"metric": "accuracy", "step": 1, "phase": "Running", "measurements": [{"value": 0.9312}]}],
    },
}


def test_status_shows_step_weight_versions_devices_and_analysis() -> None:
    text = render_status(ROLLOUT)
    assert "ml/mnist" in text
    assert "Step:      1/3" in text
    assert "Weight:    5%" in text
    assert "Stable:    aaaaaaaaaaaa" in text and "Canary:    bbbbbbbbbbbb" in text
    assert "475" in text
    assert "accuracy" in text and "last=0.9312" in text


def test_status_of_a_new_rollout_has_no_status_yet() -> None:
    text = render_status({"metadata": {"name": "x"}, "spec": {"steps": [{"setWeight": 1}]}})
    assert "Phase:     Pending" in text and "Canary:    -" in text


class RecordingCluster(Cluster):
    def __init__(self) -> None:
        self.annotations: list[tuple[str, str, str, str]] = []

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return ROLLOUT

    def annotate(self, namespace: str, name: str, key: str, value: str) -> None:
        self.annotations.append((namespace, name, key, value))


def test_actions_write_one_parseable_annotation_each() -> None:
    for argv, action in (
        (["promote", "mnist"], Action.PROMOTE),
        (["promote", "mnist", "--full"], Action.PROMOTE_FULL),
        (["abort", "mnist"], Action.ABORT),
        (["pause", "mnist"], Action.PAUSE),
        (["resume", "mnist"], Action.RESUME),
        (["retry", "mnist"], Action.RETRY),
    ):
        cluster = RecordingCluster()
        printed: list[str] = []
        assert run(build_parser().parse_args(["-n", "ml", *argv]), cluster, printed.append) == 0
        [(namespace, name, key, value)] = cluster.annotations
        assert (namespace, name, key) == ("ml", "mnist", ACTION_ANNOTATION)
        assert parse_request(value).action is action
        assert str(action) in printed[0]


def test_status_watch_redraws() -> None:
    printed: list[str] = []
    args = build_parser().parse_args(["status", "mnist", "-w"])
    run(args, RecordingCluster(), printed.append, watch_rounds=2)
    assert sum("Weight:" in line for line in printed) == 2
