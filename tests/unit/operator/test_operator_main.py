"""`python -m fedfleet.operator`: bad flags and a missing cluster fail with one line, before kopf starts."""

from __future__ import annotations

import os

import pytest

from fedfleet.operator.config import GatewayLink
from fedfleet.operator.main import build_parser, main
from fedfleet.operator.main import gateway_link as gateway_link_from


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


def test_the_gateway_flags_go_together_and_name_what_is_missing(
    gateway_link: GatewayLink, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    assert gateway_link_from(parser.parse_args([])) is None
    args = parser.parse_args(["--gateway-address", "gw:7443", "--gateway-ca", str(gateway_link.ca_file),
                              "--gateway-admin-token", str(gateway_link.admin_token_file),
                              "--gateway-publish-token", str(gateway_link.publish_token_file)])  # fmt: skip
    link = gateway_link_from(args)
    assert link is not None and (link.address, link.admin_token, link.publish_token) == (
        "gw:7443",
        gateway_link.admin_token,
        gateway_link.publish_token,
    )
    with pytest.raises(SystemExit) as caught:
        main(["--gateway-address", "gw:7443", "--gateway-ca", str(gateway_link.ca_file)])
    assert caught.value.code == 2
    assert "--gateway-admin-token: needed with --gateway-address, --gateway-ca" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # without the publish token, jobs could not publish
        main(["--gateway-address", "gw:7443", "--gateway-ca", str(gateway_link.ca_file),
              "--gateway-admin-token", str(gateway_link.admin_token_file)])  # fmt: skip
    said = capsys.readouterr().err
    assert "--gateway-publish-token: needed with --gateway-address, --gateway-ca, --gateway-admin-token" in said
    with pytest.raises(SystemExit):
        main(["--gateway-address", "gw:0", "--gateway-ca", "c", "--gateway-admin-token", "t",
              "--gateway-publish-token", "p"])  # fmt: skip
    assert "--gateway-address: must be HOST:PORT" in capsys.readouterr().err
