"""The gRPC-side commands as a user runs them: token, certs, aggregator and device-sim input checks, and
`fedfleet run` over gRPC (the default transport)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from fedfleet.security.tokens import TokenVerifier, read_key

FEDFLEET = Path(sys.executable).with_name("fedfleet")

JOB = """\
apiVersion: fedfleet.io/v1alpha1
kind: FederatedJob
metadata:
  name: cli-grpc
spec:
  rounds: 3
  seed: 2
  model: {architecture: logistic}
  training: {localEpochs: 1, batchSize: 10, learningRate: 0.1}
  cohort: {clientsPerRound: 5, overSelection: 1.2, minReports: 4, roundDeadlineSeconds: 30}
  evaluation: {serverEvery: 1}
  simulation: {devices: 20, dataset: digits, testSamples: 200, dropoutProbability: 0.1}
"""


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FEDFLEET), *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_token_keygen_and_issue(tmp_path: Path) -> None:
    key = tmp_path / "token.key"
    assert cli("token", "keygen", "--out", str(key)).returncode == 0
    again = cli("token", "keygen", "--out", str(key))
    assert again.returncode == 2 and "would invalidate every token" in again.stderr
    issued = cli("token", "issue", "--key", str(key), "--job", "team/job", "--device", "dev-9", "--ttl", "60")
    assert issued.returncode == 0, issued.stderr
    claims = TokenVerifier(read_key(key), "team/job").verify(issued.stdout.strip())
    assert claims.device_id == "dev-9"
    bad = cli("token", "issue", "--key", str(key), "--job", "j", "--device", "d", "--ttl", "-1")
    assert bad.returncode == 2 and "--ttl: must be greater than 0" in bad.stderr


def test_certs_command_writes_a_ca_and_a_server_certificate(tmp_path: Path) -> None:
    done = cli("certs", "--out", str(tmp_path / "tls"), "--job", "j", "--host", "127.0.0.1", "--host", "agg.svc")
    assert done.returncode == 0, done.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "tls/server.crt").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((tmp_path / "tls/ca.crt").read_bytes()))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["agg.svc"]


def test_bad_aggregator_and_fleet_input_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "aggregator.yaml"
    config.write_text("job: job.yaml\nlisten: {port: -1}\n")
    done = cli("aggregator", "--config", str(config))
    assert done.returncode == 2 and "listen.port: must be at least 0 (got -1)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    (tmp_path / "job.yaml").write_text(JOB)
    key = tmp_path / "k"
    key.write_text("00" * 32)
    sim = cli("device-sim", "--aggregator", "127.0.0.1:1", "--job", str(tmp_path / "job.yaml"), "--token-key",
              str(key), "--ca", str(tmp_path / "missing.crt"))  # fmt: skip
    assert sim.returncode == 2 and "missing.crt: cannot read" in sim.stderr
    zero = cli("device-sim", "--aggregator", "x:1", "--job", "j", "--token-key", "k", "--ca", "c", "--devices", "0")
    assert zero.returncode == 2 and "--devices: must be at least 1" in zero.stderr


def test_run_over_grpc_by_default_writes_the_same_outputs(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    out = tmp_path / "run"
    done = cli("run", str(job), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "final accuracy" in done.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    assert all(
        r["participants"] + r["dropped"] + r["late"] + r["surplus"] + r["rejected"] == r["invited"] == 6
        for r in records
    )
    assert (out / "tls/ca.crt").exists() and (out / "token.key").exists()
    for name in ("model.pt", "summary.json", "report.png", "checkpoint.npz", "job.yaml"):
        assert (out / name).exists(), name
    again = cli("run", str(job), "--out", str(out))
    assert again.returncode == 2 and "already holds a run" in again.stderr
    scale = cli("run", str(job), "--transport", "inprocess", "--time-scale", "0.1", "--out", str(tmp_path / "x"))
    assert scale.returncode == 2 and "--time-scale only applies to --transport grpc" in scale.stderr
