"""Time from `kubectl apply` of a FederatedJob to its aggregator pod Running, on the local control plane.

    nice -n 10 .venv/bin/python benchmarks/bench_operator_apply_to_running.py            # 10 applies
    nice -n 10 .venv/bin/python benchmarks/bench_operator_apply_to_running.py --runs 20

Starts its own control plane (binaries from the cache of e2e/controlplane/build.sh; a cold build takes tens
of minutes), a node agent on a /24 of its own, and `helm install`s charts/fedfleet. Then, one job at a time:
`kubectl apply` the example job (each under a new name), and watch until the API server reports its
aggregator pod in phase Running — the operator has reconciled the job (children, credentials, pod), the node
agent has bound the pod, written its volumes, run the init step (server certificate) and started the
aggregator process. Each job is deleted before the next. Prints the median, min and max, and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "e2e" / "controlplane", REPO / "e2e" / "nodeagent"):
    sys.path.insert(0, str(_path))

import cluster  # noqa: E402
from kubeapi import KubeApi  # noqa: E402

NAMESPACE = "bench"
NODE = "fedfleet-bench-node"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(extra)
    return env


def _run(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=300, env=env or _env(), check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}...: {done.stderr.strip()}")
    return done.stdout


def _wait(what: str, fn: Any, timeout: float = 120.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def _pod_phase(kube: KubeApi, job: str) -> str | None:
    pods = kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector=f"fedfleet.io/job={job}")["items"]
    return pods[0].get("status", {}).get("phase") if pods else None


def measure(kube: KubeApi, kubectl: list[str], runs: int) -> list[float]:
    template: dict[str, Any] = yaml.safe_load((REPO / "examples" / "federatedjob-cluster.yaml").read_text())
    seconds = []
    for i in range(runs):
        job = f"bench-{i}"
        manifest = {**template, "metadata": {"name": job}}
        start = time.perf_counter()
        _run([*kubectl, "apply", "-n", NAMESPACE, "-f", "-"], stdin=yaml.safe_dump(manifest))
        _wait(f"{job}'s aggregator Running", lambda j=job: _pod_phase(kube, j) == "Running", interval=0.01)
        seconds.append(time.perf_counter() - start)
        print(f"run {i + 1}/{runs}: {seconds[-1]:.2f}s", file=sys.stderr)
        _run([*kubectl, "delete", "federatedjob", "-n", NAMESPACE, job, "--wait=true"])
        _wait(f"{job}'s pod gone", lambda j=job: _pod_phase(kube, j) is None, timeout=60)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    bin_dir = cluster.build()
    with tempfile.TemporaryDirectory(prefix="fedfleet-bench-") as tmp:
        state = Path(tmp)
        cp = cluster.up(state / "cp", bin_dir)
        agent = None
        try:
            kube = KubeApi.from_kubeconfig(cp.kubeconfig)
            agent = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "e2e" / "nodeagent" / "agent.py"),
                    f"--kubeconfig={cp.kubeconfig}",
                    f"--image-map={REPO / 'e2e' / 'nodeagent' / 'images.yaml'}",
                    f"--state-dir={state / 'node'}",
                    f"--node-name={NODE}",
                    f"--pod-cidr=127.0.{random.randrange(200, 250)}.0/24",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(state / "agent.log", "wb"),  # noqa: SIM115  (closed with the process)
                env=_env(),
            )
            kubectl = [str(cp.binary("kubectl")), f"--kubeconfig={cp.kubeconfig}"]
            helm_env = _env(**{f"HELM_{d}_HOME": str(state / d.lower()) for d in ("CACHE", "CONFIG", "DATA")})
            _run(
                [str(cp.binary("helm")), f"--kubeconfig={cp.kubeconfig}", "install", "fedfleet",
                 str(REPO / "charts" / "fedfleet"), "--namespace=fedfleet-system", "--create-namespace",
                 "--set", "resyncSeconds=1", "--wait", "--timeout=180s"],
                env=helm_env,
            )  # fmt: skip
            _run([*kubectl, "create", "namespace", NAMESPACE])
            seconds = measure(kube, kubectl, args.runs)
        finally:
            if agent is not None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=30)
            cluster.down(state / "cp")
    result = {
        "runs": len(seconds),
        "median_seconds": round(statistics.median(seconds), 3),
        "min_seconds": round(min(seconds), 3),
        "max_seconds": round(max(seconds), 3),
        "seconds": [round(s, 3) for s in seconds],
    }
    print(f"kubectl apply → aggregator pod Running: median {result['median_seconds']}s over {len(seconds)} runs "
          f"(min {result['min_seconds']}s, max {result['max_seconds']}s)")  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
