"""fedfleet.v1's gateway services: their methods and streaming shapes are the contract devices are built on."""

from __future__ import annotations

from fedfleet.proto.v1 import gateway_pb2 as pb


def test_the_fleet_and_admin_services_have_their_methods_and_streams() -> None:
    fleet = pb.DESCRIPTOR.services_by_name["Fleet"]
    admin = pb.DESCRIPTOR.services_by_name["FleetAdmin"]
    assert fleet.full_name == "fedfleet.v1.Fleet" and admin.full_name == "fedfleet.v1.FleetAdmin"
    shapes = {m.name: (m.client_streaming, m.server_streaming) for m in (*fleet.methods, *admin.methods)}
    assert shapes == {
        "CheckIn": (False, False),
        "GetAssignment": (False, False),
        "WatchAssignment": (False, True),
        "DownloadArtifact": (False, True),
        "ReportModelHealth": (False, False),
        "PublishModel": (True, False),
        "PutFleetView": (False, False),
        "GetFleetSummary": (False, False),
    }


def test_activation_failures_and_roles_name_what_devices_and_the_rollout_say() -> None:
    failures = {name.lower() for name in pb.ModelHealthReport.ActivationFailure.DESCRIPTOR.values_by_name}
    assert failures == {
        "none", "digest_mismatch", "size_mismatch", "untrusted_key", "bad_signature", "malformed_artifact",
        "architecture_mismatch", "load_error",
    }  # fmt: skip
    assert pb.ModelHealthReport().activation_failure == pb.ModelHealthReport.NONE, "no failure is the default"
    roles = {name.lower() for name in pb.ModelAssignment.Role.DESCRIPTOR.values_by_name} - {"role_unspecified"}
    assert roles == {"stable", "canary", "control", "outside"}


def test_every_reason_a_device_refuses_an_artifact_for_has_a_wire_name_and_a_gateway_label() -> None:
    from fedfleet.gateway.inputs import ActivationFailure
    from fedfleet.security.releases import RejectionReason

    wire = {name.lower() for name in pb.ModelHealthReport.ActivationFailure.DESCRIPTOR.values_by_name}
    assert {r.value for r in RejectionReason} <= wire
    assert {f.value for f in ActivationFailure} == wire
