"""What a device is told to do next — the `Task.kind` of the fedfleet.v1 protocol — as one enum both the
aggregator and the device SDK use, with its wire values."""

from __future__ import annotations

from enum import StrEnum

from fedfleet.proto.v1 import aggregator_pb2 as pb


class TaskKind(StrEnum):
    WAIT = "wait"
    TRAIN = "train"
    EVALUATE = "evaluate"
    DONE = "done"

    def to_proto(self) -> pb.Task.Kind:
        return _TO_PROTO[self]

    @classmethod
    def from_proto(cls, value: int) -> TaskKind:
        """The kind of a received task; ValueError for a value this SDK does not know."""
        try:
            return _FROM_PROTO[value]
        except KeyError:
            raise ValueError(f"unknown task kind {value}") from None


_TO_PROTO: dict[TaskKind, pb.Task.Kind] = {
    TaskKind.WAIT: pb.Task.WAIT,
    TaskKind.TRAIN: pb.Task.TRAIN,
    TaskKind.EVALUATE: pb.Task.EVALUATE,
    TaskKind.DONE: pb.Task.DONE,
}
_FROM_PROTO: dict[int, TaskKind] = {v: k for k, v in _TO_PROTO.items()}
