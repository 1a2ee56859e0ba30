"""`python -m fedfleet.operator`: bad flags and a missing cluster fail with one line, before kopf starts."""

from __future__ import annotations

import os

import pytest

from fedfleet.operator.main import build_parser, main


def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--resync-seconds", "0"], ["--metrics-port", "70000"], ["--state-storage", "disk"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_bad_prometheus_address_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--prometheus-address", "prometheus:9090"])
    assert caught.value.code == 2
    assert "--prometheus-address: must be an http:// or https:// URL" in capsys.readouterr().err


def test_no_cluster_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "FEDFLEET_"))}
    before = dict(env)
    monkeypatch.setattr(os, "environ", env)
    assert main(["--metrics-port", "0", "--health-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in a cluster" in err and "--kubeconfig" in err
    assert env == before  # the settings go to the handlers in kopf's memo, not through the environment


def test_namespace_flags_are_exclusive() -> None:
    parser = build_parser()
    assert parser.parse_args(["--namespace", "a", "--namespace", "b"]).namespace == ["a", "b"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--namespace", "a", "--all-namespaces"])
