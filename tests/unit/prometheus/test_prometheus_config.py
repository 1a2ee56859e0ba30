"""The local cluster's Prometheus configuration (e2e/controlplane/prometheus_config.py): Prometheus itself accepts
it, it discovers pods through the API server as an account that can only list and watch, and it bounds what
a pod can send. How targets come out of the relabeling is shown on the real cluster (tests/e2e/test_prometheus.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from prometheus_tools import REPO, RULES, promtool

sys.path.insert(0, str(REPO / "e2e" / "controlplane"))
import prometheus_config


def _write_config(tmp_path: Path, **overrides: Any) -> Path:
    kubeconfig = tmp_path / "discovery.kubeconfig"
    kubeconfig.write_text(prometheus_config.discovery_kubeconfig("https://127.0.0.1:6443", b"-----CA-----", "t0ken"))
    config = prometheus_config.prometheus_config(kubeconfig, **overrides)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_prometheus_accepts_the_generated_configuration_and_its_rules(tmp_path: Path) -> None:
    done = promtool("check", "config", _write_config(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in out and f"Checking {RULES}" in out


def test_pods_are_discovered_through_the_given_kubeconfig_only(tmp_path: Path) -> None:
    config = yaml.safe_load(_write_config(tmp_path).read_text())
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "kubeconfig_file": str(tmp_path / "discovery.kubeconfig")}]
    assert job["honor_labels"] is False  # a pod cannot claim another pod's namespace or name
    assert job["sample_limit"] > 0 and job["label_limit"] > 0 and job["body_size_limit"]
    assert {r.get("target_label") for r in job["relabel_configs"]} >= {"namespace", "pod", "component", "__address__"}


def test_intervals_are_short_for_tests_and_must_be_positive(tmp_path: Path) -> None:
    config = yaml.safe_load(_write_config(tmp_path, interval_seconds=0.5).read_text())
    assert config["global"] == {"scrape_interval": "500ms", "scrape_timeout": "500ms", "evaluation_interval": "500ms"}
    with pytest.raises(ValueError, match="interval: must be greater than 0"):
        prometheus_config.prometheus_config(tmp_path / "k", interval_seconds=0)


def test_discovery_kubeconfig_authenticates_as_the_service_account_with_its_token() -> None:
    config = yaml.safe_load(prometheus_config.discovery_kubeconfig("https://127.0.0.1:1234", b"CA", "secret-token"))
    (user,) = config["users"]
    assert user["user"] == {"token": "secret-token"}  # no client certificate: not the admin
    assert user["name"] == "system:serviceaccount:fedfleet-monitoring:prometheus"
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1234"


def test_the_discovery_account_may_only_list_and_watch_pods_services_and_endpoints() -> None:
    objects = prometheus_config.discovery_objects()
    (role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "services", "endpoints"], "verbs": ["list", "watch"]}
    ]
    (binding,) = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": prometheus_config.DISCOVERY_ACCOUNT, "namespace": "fedfleet-monitoring"}
    ]
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "prometheus"


def test_object_paths_are_the_api_paths_of_each_kind() -> None:
    paths = [prometheus_config.object_path(o) for o in prometheus_config.discovery_objects()]
    assert paths == [
        "/api/v1/namespaces/fedfleet-monitoring",
        "/api/v1/namespaces/fedfleet-monitoring/serviceaccounts/prometheus",
        "/api/v1/namespaces/fedfleet-monitoring/secrets/prometheus-discovery-token",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/fedfleet-prometheus-discovery",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/fedfleet-prometheus-discovery",
    ]
