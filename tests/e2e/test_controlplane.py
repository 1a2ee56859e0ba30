"""The local control plane is a real Kubernetes: RBAC, controllers, and pods run by the node agent."""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import ApiError, KubeApi, NodeAgent, cluster, wait_for

pytestmark = pytest.mark.e2e

JSON = dict[str, Any]
SA_DIR = "var/run/secrets/kubernetes.io/serviceaccount"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _kubectl(cp: cluster.ControlPlane, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Our own kubectl, by path, with an explicit kubeconfig: never the machine's, never ~/.kube/config."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    argv = [str(cp.binary("kubectl")), f"--kubeconfig={kubeconfig or cp.kubeconfig}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


def _pod(name: str, *, args: list[str] | None = None, restart: str = "Always", **container: Any) -> JSON:
    spec: JSON = {"name": "main", "image": "fedfleet/sleeper:1", **container}
    if args is not None:
        spec["args"] = args
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [spec], "restartPolicy": restart, "terminationGracePeriodSeconds": 5},
    }


def _if(obj: JSON, predicate: Callable[[JSON], bool]) -> JSON | None:
    return obj if predicate(obj) else None


def _get_pod(kube: KubeApi, name: str) -> JSON:
    return kube.get(f"/api/v1/namespaces/default/pods/{name}")


def _ready(pod: JSON) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _gone(kube: KubeApi, path: str) -> bool:
    try:
        kube.get(path)
    except ApiError as err:
        return err.code == 404
    return False


def _bearer_get(cp: cluster.ControlPlane, path: str, token: str) -> int:
    req = urllib.request.Request(cp.server + path, headers={"Authorization": f"Bearer {token}"})
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except OSError:
        return False
    return state != "Z"


def _sleeper_pod(name: str) -> JSON:
    return _pod(
        name,
        args=["8080"],
        env=[
            {"name": "MY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "GREETING", "value": "hello $(MY_POD_NAME)"},
        ],
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
    )


def _running_sleeper(kube: KubeApi, name: str) -> JSON:
    kube.create("/api/v1/namespaces/default/pods", _sleeper_pod(name))
    return wait_for(f"pod {name} Running and Ready", lambda: _if(_get_pod(kube, name), _ready))


def _process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_version_and_node_ready_through_our_kubectl(control_plane: cluster.ControlPlane, node_agent: NodeAgent) -> None:
    version = _kubectl(control_plane, "version", "-o", "json")
    assert version.returncode == 0, version.stderr
    versions = json.loads(version.stdout)
    assert versions["serverVersion"]["gitVersion"] == versions["clientVersion"]["gitVersion"] == "v1.37.2"

    got = _kubectl(control_plane, "get", "node", node_agent.name, "-o", "json")
    assert got.returncode == 0, got.stderr
    node = json.loads(got.stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert int(node["status"]["capacity"]["pods"]) > 0
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == node_agent.name


def test_pod_runs_as_a_process_with_its_own_ip_and_becomes_ready(
    kube: KubeApi, node_agent: NodeAgent, control_plane: cluster.ControlPlane
) -> None:
    name = _name("sleeper")
    pod = _running_sleeper(kube, name)
    status = pod["status"]
    ip = status["podIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(node_agent.pod_cidr)
    assert pod["spec"]["nodeName"] == node_agent.name  # bound by the agent: no scheduler runs
    assert status["phase"] == "Running"
    main = status["containerStatuses"][0]
    assert main["ready"] is True and main["restartCount"] == 0 and "running" in main["state"]

    # The process answers on the pod's own address, and got the env the pod spec asked for.
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as resp:
        assert resp.read().decode() == name
    pod_dir = node_agent.pod_dir(pod["metadata"]["uid"])
    pid = int((pod_dir / "logs" / "main.pid").read_text())
    env = _process_env(pid)
    assert env["MY_POD_IP"] == ip and env["MY_POD_NAME"] == name and env["MY_NAMESPACE"] == "default"
    assert env["GREETING"] == f"hello {name}"
    assert env["FEDFLEET_ROOT"] == str(pod_dir)
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1" and env["KUBERNETES_SERVICE_PORT"] == str(control_plane.port)

    # The service-account volume that admission added is there, with a token the API server accepts.
    sa = pod_dir / SA_DIR
    assert (sa / "namespace").read_text() == "default"
    assert (sa / "ca.crt").read_bytes().strip() == control_plane.ca_file.read_bytes().strip()
    token = (sa / "token").read_text()
    assert _bearer_get(control_plane, "/api/v1/namespaces/default/pods", token) == 403  # known, not allowed
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": control_plane.server, "certificate-authority": str(control_plane.ca_file)},
            }
        ],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "c",
    }
    sa_kubeconfig = pod_dir / "sa.kubeconfig"
    sa_kubeconfig.write_text(yaml.safe_dump(config))
    denied = _kubectl(control_plane, "get", "pods", kubeconfig=sa_kubeconfig)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower() and "system:serviceaccount:default:default" in denied.stderr
    kube.delete(f"/api/v1/namespaces/default/pods/{name}")


def test_deleting_a_pod_stops_its_process(kube: KubeApi, node_agent: NodeAgent) -> None:
    name = _name("doomed")
    pod = _running_sleeper(kube, name)
    pid = int((node_agent.pod_dir(pod["metadata"]["uid"]) / "logs" / "main.pid").read_text())
    assert _pid_alive(pid)

    kube.delete(f"/api/v1/namespaces/default/pods/{name}", {"gracePeriodSeconds": 5})
    wait_for(f"pod {name} removed from the API", lambda: _gone(kube, f"/api/v1/namespaces/default/pods/{name}"))
    assert not _pid_alive(pid)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/", timeout=2)


def test_restart_policy_decides_phase_and_restarts(kube: KubeApi, node_agent: NodeAgent) -> None:
    failing = _name("fails")
    kube.create("/api/v1/namespaces/default/pods", _pod(failing, restart="Never", command=["sh", "-c", "exit 3"]))
    done = wait_for(
        f"pod {failing} Failed",
        lambda: _if(_get_pod(kube, failing), lambda p: p["status"].get("phase") == "Failed"),
    )
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3

    flaky = _name("flaky")
    kube.create("/api/v1/namespaces/default/pods", _pod(flaky, restart="OnFailure", command=["sh", "-c", "exit 1"]))
    restarted = wait_for(
        f"pod {flaky} restarted",
        lambda: _if(_get_pod(kube, flaky), lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 2),
    )
    last = restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 1
    assert restarted["status"]["phase"] in ("Running", "Pending")

    ok = _name("succeeds")
    kube.create("/api/v1/namespaces/default/pods", _pod(ok, restart="OnFailure", command=["true"]))
    wait_for(f"pod {ok} Succeeded", lambda: _get_pod(kube, ok)["status"].get("phase") == "Succeeded")
    for name in (failing, flaky, ok):
        kube.delete(f"/api/v1/namespaces/default/pods/{name}")


def test_rbac_denies_a_service_account_without_bindings(kube: KubeApi, control_plane: cluster.ControlPlane) -> None:
    sa = _name("nobody")
    kube.create("/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": sa}})
    answer = kube.create(
        f"/api/v1/namespaces/default/serviceaccounts/{sa}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
    )
    token = answer["status"]["token"]
    assert _bearer_get(control_plane, "/api/v1/namespaces/default/pods", token) == 403
    assert _bearer_get(control_plane, "/api/v1/namespaces/default/pods", "not-a-token") == 401
    kube.get("/api/v1/namespaces/default/pods")  # while the admin may


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(
    kube: KubeApi, control_plane: cluster.ControlPlane
) -> None:
    parent_name, child_name = _name("parent"), _name("child")
    parent = kube.create("/api/v1/namespaces/default/configmaps", {"metadata": {"name": parent_name}})
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": parent_name, "uid": parent["metadata"]["uid"]}
    kube.create(
        "/api/v1/namespaces/default/configmaps",
        {"metadata": {"name": child_name, "ownerReferences": [owner]}, "data": {"k": "v"}},
    )
    kube.delete(f"/api/v1/namespaces/default/configmaps/{parent_name}", {"propagationPolicy": "Background"})
    wait_for(
        f"garbage collection of {child_name}",
        lambda: _gone(kube, f"/api/v1/namespaces/default/configmaps/{child_name}"),
        timeout=90,
    )


def test_token_controller_fills_service_account_token_secrets(
    kube: KubeApi, control_plane: cluster.ControlPlane
) -> None:
    name = _name("legacy-token")
    kube.create(
        "/api/v1/namespaces/default/secrets",
        {
            "metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": "default"}},
            "type": "kubernetes.io/service-account-token",
        },
    )
    secret = wait_for(
        f"token in secret {name}",
        lambda: _if(
            kube.get(f"/api/v1/namespaces/default/secrets/{name}"), lambda s: bool(s.get("data", {}).get("token"))
        ),
    )
    assert {"token", "ca.crt", "namespace"} <= set(secret["data"])


def test_helm_installs_and_uninstalls_a_chart(
    kube: KubeApi, control_plane: cluster.ControlPlane, tmp_path: Path
) -> None:
    chart = tmp_path / "demo"
    (chart / "templates").mkdir(parents=True)
    # kubeVersion makes helm check the API server's reported version, which build.sh stamps in.
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\nkubeVersion: '>=1.37.0-0'\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
        "data:\n  answer: {{ .Values.answer | quote }}\n"
    )
    (chart / "values.yaml").write_text("answer: 41\n")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env |= {f"HELM_{d}_HOME": str(tmp_path / d.lower()) for d in ("CACHE", "CONFIG", "DATA")}
    helm = [str(control_plane.binary("helm")), f"--kubeconfig={control_plane.kubeconfig}", "--namespace=default"]
    release = _name("demo")

    def run(*args: str) -> None:
        done = subprocess.run([*helm, *args], capture_output=True, text=True, timeout=120, env=env, check=False)
        assert done.returncode == 0, done.stderr

    run("install", release, str(chart), "--set", "answer=42")
    cm = kube.get(f"/api/v1/namespaces/default/configmaps/{release}-settings")
    assert cm["data"] == {"answer": "42"}
    run("uninstall", release, "--wait")
    assert _gone(kube, f"/api/v1/namespaces/default/configmaps/{release}-settings")


def test_pod_gets_volumes_env_from_objects_and_runs_init_containers_first(kube: KubeApi, node_agent: NodeAgent) -> None:
    cfg, sec, name = _name("cfg"), _name("sec"), _name("mounts")
    kube.create("/api/v1/namespaces/default/configmaps", {"metadata": {"name": cfg}, "data": {"ROUNDS": "3"}})
    kube.create("/api/v1/namespaces/default/secrets", {"metadata": {"name": sec}, "stringData": {"tls.key": "KEY\n"}})
    script = (
        'cat "$FEDFLEET_ROOT/etc/tls/tls.key" "$FEDFLEET_ROOT/work/init-done"; '
        f'test -s "$FEDFLEET_ROOT/{SA_DIR}/token" && has_token=yes; '
        'echo "rounds=$ROUNDS token=$has_token"; '
        "exec sleep 600"
    )
    pod = _pod(
        name,
        command=["sh", "-c", script],
        envFrom=[{"configMapRef": {"name": cfg}}],
        volumeMounts=[{"name": "tls", "mountPath": "/etc/tls"}, {"name": "work", "mountPath": "/work"}],
        readinessProbe={
            "exec": {"command": ["sh", "-c", 'test -f "$FEDFLEET_ROOT/work/init-done"']},
            "periodSeconds": 1,
        },
    )
    pod["spec"]["initContainers"] = [
        {
            "name": "init",
            "image": "fedfleet/sleeper:1",
            "command": ["sh", "-c", 'echo "init ran" > "$FEDFLEET_ROOT/work/init-done"'],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
        }
    ]
    pod["spec"]["volumes"] = [{"name": "tls", "secret": {"secretName": sec}}, {"name": "work", "emptyDir": {}}]
    kube.create("/api/v1/namespaces/default/pods", pod)

    ready = wait_for(f"pod {name} Ready", lambda: _if(_get_pod(kube, name), _ready))
    init = ready["status"]["initContainerStatuses"][0]["state"]["terminated"]
    assert init["exitCode"] == 0
    log = node_agent.pod_dir(ready["metadata"]["uid"]) / "logs" / "main.log"
    output = wait_for("the container's output", lambda: log.read_text() if "rounds=" in log.read_text() else None)
    assert output.splitlines() == ["KEY", "init ran", "rounds=3 token=yes"]
    kube.delete(f"/api/v1/namespaces/default/pods/{name}")


def test_failing_liveness_probe_restarts_the_container(kube: KubeApi, node_agent: NodeAgent) -> None:
    name = _name("unhealthy")
    probe = {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2}  # nothing listens there
    pod = _pod(name, command=["sleep", "600"], livenessProbe=probe)
    pod["spec"]["terminationGracePeriodSeconds"] = 1
    kube.create("/api/v1/namespaces/default/pods", pod)
    restarted = wait_for(
        f"pod {name} restarted by its liveness probe",
        lambda: _if(_get_pod(kube, name), lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 1),
    )
    assert restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]["message"] == "liveness probe failed"
    kube.delete(f"/api/v1/namespaces/default/pods/{name}")
