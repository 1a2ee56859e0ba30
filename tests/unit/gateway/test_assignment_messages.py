"""Assignment messages are built once per distinct assignment and shared: equal assignments get the same
bytes, any difference (version, role, generation, release) gets its own message, and the table is bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfleet.gateway.assignment_messages import AssignmentMessages, assignment_message
from fedfleet.proto.v1 import gateway_pb2 as pb
from gateway_support import FLEET, bench, canary_and_stable_devices, view_json


def test_equal_assignments_share_their_messages_and_different_ones_do_not(tmp_path: Path) -> None:
    b = bench(tmp_path)
    b.put(view_json(b.d1, b.d2, weight=50.0), b.v1, b.v2)
    canary, stable = canary_and_stable_devices(50.0, count=2)
    messages = AssignmentMessages(check_in_interval_seconds=45.0)
    answers = {d: b.gateway.check_in(FLEET, d, {}) for d in canary + stable}

    first, second = (messages.check_in(answers[d]) for d in canary)
    assert first is second, "two canaries get one message object"
    assert first.check_in_interval_seconds == 45.0
    assert first.assignment.version == b.d2 and first.assignment.role == pb.ModelAssignment.CANARY
    assert first.assignment.release.record and first.assignment.size == len(b.v2)
    on_stable = messages.check_in(answers[stable[0]])
    assert on_stable is not first and on_stable.assignment.version == b.d1
    assert len(messages) == 2

    # What is shared is exactly what would be built for the device on its own, in every form.
    for device, answer in answers.items():
        built = assignment_message(answer).SerializeToString()
        assert messages.assignment(answer).SerializeToString() == built, device
        assert messages.event(answer).assignment.SerializeToString() == built
        assert messages.check_in(answer).assignment.SerializeToString() == built

    # A new generation of the same cohorts is another answer (its generation differs): a new message.
    b.put(view_json(b.d1, b.d2, weight=50.0, generation=2))
    later = messages.check_in(b.gateway.check_in(FLEET, canary[0], {}))
    assert later is not first and later.assignment.generation == 2


def test_the_table_is_emptied_when_full_and_answers_stay_right(tmp_path: Path) -> None:
    b = bench(tmp_path)
    messages = AssignmentMessages(check_in_interval_seconds=60.0, max_assignments=2)
    for generation in range(1, 6):
        b.put(view_json(b.d1, generation=generation), b.v1)
        answer = b.gateway.check_in(FLEET, "dev-1", {})
        assert messages.assignment(answer).generation == generation
        assert 1 <= len(messages) <= 2
    with pytest.raises(ValueError, match="max_assignments"):
        AssignmentMessages(60.0, max_assignments=0)
