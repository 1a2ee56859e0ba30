"""`make cluster-up` as a user configures it: the binaries come from $FEDFLEET_CACHE, as the build scripts
put them there, and the KUBECONFIG it prints is right for a relative and an absolute CLUSTER_STATE.

Only `make -n`: the commands are printed, nothing is built or started.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _dry_run(*assignments: str, environ: dict[str, str] | None = None) -> str:
    """What `make -n cluster-up` would run, with a HOME of its own and no FEDFLEET_CACHE unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("FEDFLEET_CACHE", "CLUSTER_STATE", "MAKEFLAGS")}
    env.update({"HOME": "/home/tester", **(environ or {})})
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "cluster-up", *assignments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _printed_kubeconfig(out: str) -> str:
    found = re.search(r"export KUBECONFIG=(\S+)", out)
    assert found is not None, out
    return found.group(1)


def _helm(out: str) -> str:
    found = re.search(r"(\S+/helm) --kubeconfig (\S+)", out)
    assert found is not None, out
    return found.group(1)


def _k8s_version() -> str:
    """The version build.sh builds, which keys its bin directory."""
    found = re.search(r"^K8S_VERSION=(v1\.\S+)$", (REPO / "e2e/controlplane/build.sh").read_text(), re.MULTILINE)
    assert found is not None
    return found.group(1)


def test_defaults_use_the_home_cache_and_the_repos_state_dir() -> None:
    out = _dry_run()
    assert _helm(out) == f"/home/tester/.cache/fedfleet/controlplane/{_k8s_version()}/bin/helm"
    assert _printed_kubeconfig(out) == f"{REPO}/.cluster/kubeconfig"


@pytest.mark.parametrize("from_environment", [False, True], ids=["make-variable", "environment"])
def test_fedfleet_cache_moves_every_binary(from_environment: bool) -> None:
    cache = "/opt/fedfleet-cache"
    out = _dry_run(environ={"FEDFLEET_CACHE": cache}) if from_environment else _dry_run(f"FEDFLEET_CACHE={cache}")
    bin_dir = f"{cache}/controlplane/{_k8s_version()}/bin"
    assert _helm(out) == f"{bin_dir}/helm"
    assert f"PATH={bin_dir}:" in out
    # The build scripts and cluster.py are told the same cache, so they build and find the binaries there.
    for script in ("e2e/prometheus/build.sh", "e2e/controlplane/build.sh", "e2e/controlplane/cluster.py up"):
        assert re.search(rf"FEDFLEET_CACHE={re.escape(cache)} (\S+ )?{re.escape(script)}", out), script
    assert "/home/tester/.cache" not in out


def test_an_empty_fedfleet_cache_means_the_default_as_for_the_build_scripts() -> None:
    assert "/home/tester/.cache/fedfleet/controlplane/" in _helm(_dry_run("FEDFLEET_CACHE="))


def test_an_absolute_cluster_state_is_printed_as_it_is(tmp_path: Path) -> None:
    state = tmp_path / "dev-cluster"
    out = _dry_run(f"CLUSTER_STATE={state}")
    assert _printed_kubeconfig(out) == f"{state}/kubeconfig"
    assert f"--kubeconfig {state}/kubeconfig" in out and f"--state-dir {state}" in out


def test_a_relative_cluster_state_is_printed_from_the_repository() -> None:
    out = _dry_run("CLUSTER_STATE=state/dev")
    assert _printed_kubeconfig(out) == f"{REPO}/state/dev/kubeconfig"
