"""Refusal reasons between the aggregator and devices: every reason the server sends is one the device knows."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest

from fedfleet.aggregator import service
from fedfleet.device.client import AggregatorError
from fedfleet.engine.types import RejectReason
from fedfleet.proto import refusals
from fedfleet.proto.refusals import LEFT_ROUND, Refusal
from fedfleet.security.tokens import TokenProblem

AGGREGATOR = Path(service.__file__).resolve().parent

#: The wire strings devices in the field match on. Changing one breaks them: this list changes only by growing.
WIRE = {
    "token_missing", "token_malformed", "token_bad_signature", "token_wrong_job", "token_expired",
    "device_mismatch", "not_checked_in", "bad_request", "malformed_message", "model_version_gone", "bad_report",
    "not_in_cohort", "wrong_round", "duplicate", "shape", "dtype", "layout", "non_finite", "bad_weight",
    "too_large", "corrupt", "round_closed", "secure_only", "secagg_malformed", "stalled", "busy",
    "secagg_off", "secagg_excluded", "secagg_stage_closed", "secagg_aborted",
    # The fleet gateway's (fedfleet.v1.Fleet and FleetAdmin).
    "token_wrong_fleet", "admin_token_invalid", "no_fleet_view", "bad_attributes", "not_assigned",
    "bad_health_report", "report_too_frequent", "unknown_artifact", "offset_out_of_range", "too_many_watches",
    "unknown_fleet", "bad_fleet_view", "stale_fleet_view", "artifact_missing", "publish_rejected",
    "publish_token_only",
}  # fmt: skip


def test_the_wire_strings_stay_as_they_are() -> None:
    assert {r.value for r in Refusal} == WIRE
    assert refusals.ERROR_KEY == "fedfleet-error"


def test_every_rejected_update_and_token_problem_has_its_reason() -> None:
    assert set(service.REJECTION_REFUSALS) == set(RejectReason) == set(service.REJECTION_CODES)
    # The strings devices saw before there was one module: the engine's labels and token_<problem>.
    assert all(refusal.value == reason.value for reason, refusal in service.REJECTION_REFUSALS.items())
    assert set(service.TOKEN_REFUSALS) == set(TokenProblem) == set(service.TOKEN_CODES)
    assert all(refusal.value == f"token_{problem.value}" for problem, refusal in service.TOKEN_REFUSALS.items())


def _refused_reasons() -> list[tuple[str, int, str]]:
    """Every reason the aggregator package passes to a SecureRoundRefused (typed as Refusal, so mypy keeps
    them known; this scan keeps every one mapped to its status code)."""
    found = []
    for path in sorted(AGGREGATOR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "SecureRoundRefused"):
                continue
            reason = node.args[0] if node.args else next(k.value for k in node.keywords if k.arg == "reason")
            for part in ast.walk(reason):  # Refusal.X, or a conditional choosing between them
                if isinstance(part, ast.Attribute) and getattr(part.value, "id", None) == "Refusal":
                    found.append((path.name, node.lineno, Refusal[part.attr].value))
    return found


def test_every_secure_round_refusal_is_a_known_reason() -> None:
    found = _refused_reasons()
    assert len(found) >= 8, found  # the scan sees the secure round's refusals
    unknown = [f"{name}:{line}: {reason!r}" for name, line, reason in found if reason not in WIRE]
    assert not unknown, "add them to fedfleet.proto.refusals.Refusal:\n" + "\n".join(unknown)
    assert {reason for *_, reason in found} <= set(service.SECURE_CODES)


def test_the_device_reads_every_reason_back() -> None:
    for refusal in Refusal:
        trailing = grpc.aio.Metadata((refusals.ERROR_KEY, refusal.value))
        rpc = grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(), trailing, "no")
        err = AggregatorError.from_rpc(rpc)
        assert err.reason is refusal and err.message == "no"


@pytest.mark.parametrize("trailing", [(), (("fedfleet-error", "from_a_newer_server"),)])
def test_no_reason_or_an_unknown_one_leaves_only_the_status_code(trailing: tuple[tuple[str, str], ...]) -> None:
    rpc = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), "x")
    err = AggregatorError.from_rpc(rpc)
    assert err.reason is None and err.transient


def test_leaving_a_round_is_for_reasons_that_are_not_the_devices_fault() -> None:
    assert {r.value for r in LEFT_ROUND} == {
        "secagg_excluded", "secagg_aborted", "secagg_stage_closed", "round_closed", "wrong_round",
    }  # fmt: skip
    assert Refusal.SECAGG_MALFORMED not in LEFT_ROUND  # a malformed message is the device's doing
