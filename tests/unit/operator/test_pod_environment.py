"""The aggregator pod's environment: the operator sets what the programs in the pod read, by the same names."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from operator_jobs import job_body

from fedfleet.aggregator.k8s_status import ClusterTarget
from fedfleet.api import pod_environment
from fedfleet.api.federatedjob import FederatedJobSpec
from fedfleet.api.pod_environment import JobEnvironment, under_root
from fedfleet.operator.config import OperatorConfig
from fedfleet.operator.resources import build_aggregator_pod

SOURCE = Path(pod_environment.__file__).resolve().parents[1]  # the fedfleet package
NAMES = (
    pod_environment.JOB_NAME,
    pod_environment.JOB_NAMESPACE,
    pod_environment.POD_IP,
    pod_environment.ROOT,
    pod_environment.NODE_AGENT_POD_IP,
    pod_environment.KUBERNETES_SERVICE_HOST,
    pod_environment.KUBERNETES_SERVICE_PORT,
    pod_environment.SERVICE_ACCOUNT_DIR,
)


def _pod() -> dict[str, Any]:
    body = job_body()
    return build_aggregator_pod(body, FederatedJobSpec.model_validate(body["spec"]), OperatorConfig(), "config")


def _literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_the_status_reporter_finds_the_job_the_operator_put_in_the_pod(tmp_path: Path) -> None:
    (aggregator,) = _pod()["spec"]["containers"]
    env = _literal_env(aggregator)
    assert JobEnvironment.from_environ(env) == JobEnvironment("digits", "team-a")
    # What the kubelet (or the local node agent) adds to every pod.
    cluster = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443", "FEDFLEET_ROOT": str(tmp_path)}
    target = ClusterTarget.from_environment({**env, **cluster})
    assert target is not None and (target.namespace, target.name) == ("team-a", "digits")
    assert target.token_file == tmp_path / "var/run/secrets/kubernetes.io/serviceaccount/token"


def test_every_variable_a_container_refers_to_is_set_in_that_container() -> None:
    # Kubernetes expands $(NAME) in command and args only for variables of the container's own env.
    pod = _pod()
    for container in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]:
        defined = {e["name"] for e in container.get("env", [])}
        for arg in [*container.get("command", []), *container.get("args", [])]:
            for name in re.findall(r"\$\((\w+)\)", arg):
                assert name in defined, (container["name"], arg)
        pod_ip = next(e for e in container["env"] if e["name"] == pod_environment.POD_IP)
        assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_outside_an_operator_made_pod_there_is_no_job() -> None:
    assert JobEnvironment.from_environ({}) is None
    assert JobEnvironment.from_environ({"FEDFLEET_JOB_NAME": "digits"}) is None
    assert ClusterTarget.from_environment({"FEDFLEET_JOB_NAME": "digits", "FEDFLEET_JOB_NAMESPACE": "a"}) is None


def test_paths_resolve_under_the_pod_root_only_when_there_is_one(tmp_path: Path) -> None:
    assert under_root("/etc/fedfleet/run", {"FEDFLEET_ROOT": str(tmp_path)}) == tmp_path / "etc/fedfleet/run"
    assert under_root("/etc/fedfleet/run", {}) == Path("/etc/fedfleet/run")
    assert under_root("relative/path", {"FEDFLEET_ROOT": str(tmp_path)}) == Path("relative/path")
    ipv6 = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert pod_environment.in_cluster_server(ipv6) == "https://[fd00::1]:6443"
    assert pod_environment.in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None


def _docstrings(tree: ast.Module) -> set[int]:
    """Docstrings may mention the names: they are prose, not a second definition."""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
    }


def test_the_names_are_written_in_one_place() -> None:
    home = Path(pod_environment.__file__).resolve()
    found: list[str] = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.resolve() == home:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        prose = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
                text = node.value
                if text in NAMES or any(f"$({name})" in text for name in NAMES):
                    found.append(f"{path.relative_to(SOURCE)}:{node.lineno}: {text!r}")
    assert not found, "use fedfleet.api.pod_environment instead:\n" + "\n".join(found)
