"""The wire messages of device assignments, built once per distinct assignment.

A fleet view gives every device one of a few assignments (per rollout: canary, stable or control; outside
every rollout: the fleet's stable version), so thousands of devices get byte-identical answers. Building the
message costs more than a check-in's own work (the signed release's record is re-encoded as canonical JSON
each time), and an abort sends the same event to every canary device at once; so each distinct assignment's
messages are built the first time it is answered and shared afterwards. The messages are never mutated
after they are built: grpc only serializes them.

The table is bounded: an assignment of a view that was replaced is never asked for again, and when the
table is full it is emptied and refills with what is current.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfleet.proto.v1 import gateway_pb2 as pb

from .watchers import DeviceAssignment

#: Distinct assignments remembered: far more than one view's (at most 3 per rollout and one more per fleet),
#: so only replaced views' entries are ever dropped; a few KB each.
MAX_ASSIGNMENTS = 4096


def assignment_message(answer: DeviceAssignment) -> pb.ModelAssignment:
    a = answer.assignment
    message = pb.ModelAssignment(
        version=a.version or "",
        role=pb.ModelAssignment.Role.Value(str(a.role).upper()),
        rollout=a.rollout or "",
        revision=a.revision,
        generation=answer.generation,
    )
    if answer.release is not None:
        r = answer.release
        message.release.CopyFrom(pb.SignedRelease(record=r.record, signature=r.signature, key_id=r.key_id))
        message.size = r.size
    return message


@dataclass(frozen=True)
class _Messages:
    assignment: pb.ModelAssignment
    check_in: pb.FleetCheckInResponse
    event: pb.AssignmentEvent


class AssignmentMessages:
    """Answers for CheckIn, GetAssignment and WatchAssignment; the same object for equal assignments."""

    def __init__(self, check_in_interval_seconds: float, max_assignments: int = MAX_ASSIGNMENTS) -> None:
        if max_assignments < 1:
            raise ValueError("max_assignments must be >= 1")
        self._interval = check_in_interval_seconds
        self._max = max_assignments
        self._built: dict[DeviceAssignment, _Messages] = {}

    def __len__(self) -> int:
        return len(self._built)

    def assignment(self, answer: DeviceAssignment) -> pb.ModelAssignment:
        return self._messages(answer).assignment

    def check_in(self, answer: DeviceAssignment) -> pb.FleetCheckInResponse:
        return self._messages(answer).check_in

    def event(self, answer: DeviceAssignment) -> pb.AssignmentEvent:
        return self._messages(answer).event

    def _messages(self, answer: DeviceAssignment) -> _Messages:
        # Keyed by the whole assignment (version, role, rollout, revision, generation and the signed
        # release), so two answers share messages only when every byte of them would be the same.
        built = self._built.get(answer)
        if built is None:
            if len(self._built) >= self._max:
                self._built.clear()
            message = assignment_message(answer)
            built = _Messages(
                assignment=message,
                check_in=pb.FleetCheckInResponse(assignment=message, check_in_interval_seconds=self._interval),
                event=pb.AssignmentEvent(assignment=message),
            )
            self._built[answer] = built
        return built
