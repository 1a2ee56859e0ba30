"""The aggregator's status reporter: what it sends, over real HTTPS, and how it copes with failures."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fedfleet.aggregator.k8s_status import ClusterTarget, StatusReporter, outcome_status, round_status
from fedfleet.engine.records import RoundRecord
from fedfleet.security.certs import generate_ca, issue_server_cert


def _record(**overrides: Any) -> RoundRecord:
    values: dict[str, Any] = dict(
        round=2, succeeded=True, accuracy=0.8, loss=0.5, train_loss=0.4, federated_accuracy=None,
        federated_loss=None, invited=4, participants=3, dropped=1, late=0, rejected=0, bytes_sent=10,
        bytes_received=10, sim_seconds=1.0, wall_seconds=1.0,
    )  # fmt: skip
    values.update(overrides)
    return RoundRecord(**values)


def test_round_status_has_the_fields_the_aggregator_owns() -> None:
    status = round_status(_record(), churn=0.2, epsilon_spent=0.7, at="2030-01-01T00:00:00Z")
    assert status == {
        "round": 2,
        "participants": 3,
        "dropped": 1,
        "accuracy": 0.8,
        "churn": 0.2,
        "epsilonSpent": 0.7,
        "lastRoundTime": "2030-01-01T00:00:00Z",
    }
    # No evaluation this round, no DP: the fields are left out, so a merge patch keeps the earlier values.
    quiet = round_status(_record(accuracy=None), churn=float("nan"), epsilon_spent=None, at="t")
    assert set(quiet) == {"round", "participants", "dropped", "lastRoundTime"}
    assert outcome_status("RoundsCompleted", "5 rounds") == {
        "outcome": {"reason": "RoundsCompleted", "message": "5 rounds"}
    }


def test_an_outcome_the_status_schema_refuses_fails_before_it_is_sent() -> None:
    # The operator reads `outcome` with the same model (JobOutcome): a reason it would refuse never leaves.
    with pytest.raises(ValueError, match=r"^status\.outcome\.reason: "):
        outcome_status("rounds completed")


def test_target_comes_from_the_pod_environment(tmp_path: Path) -> None:
    env = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
        "FEDFLEET_JOB_NAME": "digits",
        "FEDFLEET_JOB_NAMESPACE": "team-a",
        "FEDFLEET_ROOT": str(tmp_path),
    }
    target = ClusterTarget.from_environment(env)
    assert target is not None
    assert (
        target.status_url
        == "https://127.0.0.1:6443/apis/fedfleet.io/v1alpha1/namespaces/team-a/federatedjobs/digits/status"
    )
    assert target.token_file == tmp_path / "var/run/secrets/kubernetes.io/serviceaccount/token"
    assert ClusterTarget.from_environment({k: v for k, v in env.items() if k != "FEDFLEET_JOB_NAME"}) is None
    assert StatusReporter.from_environment({}) is None  # `fedfleet run` and local aggregators report nothing


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, dict[str, str], Any]]] = []
    fail_next = 0

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.command, self.path, dict(self.headers), body))
        code = 503 if type(self).fail_next > 0 else 200
        type(self).fail_next -= 1
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def api_server(tmp_path: Path) -> Iterator[tuple[ClusterTarget, type[_Recorder]]]:
    ca = generate_ca("test api")
    server_pair = issue_server_cert(ca, ["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(server_pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(server_pair.key_pem)
    sa = tmp_path / "var/run/secrets/kubernetes.io/serviceaccount"
    sa.mkdir(parents=True)
    (sa / "ca.crt").write_bytes(ca.cert_pem)
    (sa / "token").write_text("first-token\n")
    handler = type("Recorder", (_Recorder,), {"requests": [], "fail_next": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    env = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(httpd.server_address[1]),
        "FEDFLEET_JOB_NAME": "digits",
        "FEDFLEET_JOB_NAMESPACE": "team-a",
        "FEDFLEET_ROOT": str(tmp_path),
    }
    target = ClusterTarget.from_environment(env)
    assert target is not None
    try:
        yield target, handler
    finally:
        httpd.shutdown()


def test_reporter_merge_patches_status_over_tls_with_the_current_token(
    api_server: tuple[ClusterTarget, type[_Recorder]],
) -> None:
    target, handler = api_server
    reporter = StatusReporter(target.send)
    reporter.report(round_status(_record(round=1), at="t1"))
    assert reporter.close(timeout=10)
    method, path, headers, body = handler.requests[-1]
    assert (method, path) == ("PATCH", "/apis/fedfleet.io/v1alpha1/namespaces/team-a/federatedjobs/digits/status")
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert headers["Authorization"] == "Bearer first-token"
    assert body == {"status": round_status(_record(round=1), at="t1")}
    # A rotated token is picked up on the next request.
    target.token_file.write_text("second-token")
    reporter = StatusReporter(target.send)
    reporter.report({"round": 2})
    assert reporter.close(timeout=10)
    assert handler.requests[-1][2]["Authorization"] == "Bearer second-token"


def test_reporter_retries_until_the_api_answers(api_server: tuple[ClusterTarget, type[_Recorder]]) -> None:
    target, handler = api_server
    handler.fail_next = 2
    reporter = StatusReporter(target.send)
    reporter.report({"round": 1})
    assert reporter.close(timeout=20)
    assert [r[3] for r in handler.requests] == [{"status": {"round": 1}}] * 3
    assert reporter.failures == 2 and reporter.sent == 1


def test_pending_reports_coalesce_and_never_lose_the_outcome() -> None:
    sent: list[dict[str, Any]] = []
    gate = threading.Event()
    in_flight = threading.Event()

    def slow_send(status: dict[str, Any]) -> None:
        in_flight.set()
        gate.wait(60)
        sent.append(status)

    reporter = StatusReporter(slow_send)
    reporter.report({"round": 1})
    assert in_flight.wait(60), "the first report was never sent"  # it is in flight now, held at the gate
    reporter.report({"round": 2, "accuracy": 0.5})
    reporter.report(outcome_status("RoundsCompleted"))
    reporter.report({"round": 3})
    gate.set()
    assert reporter.close(timeout=5)
    assert sent == [
        {"round": 1},
        {"round": 3, "accuracy": 0.5, "outcome": {"reason": "RoundsCompleted", "message": ""}},
    ]


def test_on_round_callback_reports_each_round() -> None:
    sent: list[dict[str, Any]] = []
    reporter = StatusReporter(sent.append)
    callback = reporter.on_round(churn=lambda: 0.1, epsilon=lambda: None)
    callback(_record(round=4))
    assert reporter.close(timeout=5)
    assert sent[-1]["round"] == 4 and sent[-1]["churn"] == 0.1 and "epsilonSpent" not in sent[-1]
