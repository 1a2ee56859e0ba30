"""Registering the Aggregator servicer through the shared guard (fedfleet.proto.guard): bytes which do not
parse as the method's message, or are larger than the method needs, are a refusal — INVALID_ARGUMENT for a
request, DATA_LOSS inside an upload stream — counted by method, logged at most once per interval, and never a
traceback.

What is the aggregator's own here: the limits, which follow the job (an upload header is at most what the
job's tensor layout needs; a masked input's header lists at most one complaint per cohort member), and that a
bad message inside an upload stream is a corrupt update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from fedfleet.engine.round import UpdateRejected
from fedfleet.engine.types import RejectReason
from fedfleet.proto import codec, guard
from fedfleet.proto.guard import (
    MAX_TOP_LEVEL_FIELDS,
    Malformed,
    MalformedCounter,
    MessageLimits,
    guarded_deserializer,
    top_level_fields,
)
from fedfleet.proto.v1 import aggregator_pb2 as pb

__all__ = [
    "MAX_TOP_LEVEL_FIELDS",
    "SMALL_REQUEST_BYTES",
    "Malformed",
    "MalformedCounter",
    "MessageLimits",
    "add_guarded_servicer",
    "guarded_deserializer",
    "malformed_counter",
    "message_limits",
    "top_level_fields",
]

log = logging.getLogger("fedfleet.aggregator")

SERVICE = pb.DESCRIPTOR.services_by_name["Aggregator"]
#: Largest request of a method not named in MessageLimits.per_method: check-ins, polls, reports, keys.
SMALL_REQUEST_BYTES = 64 << 10


def message_limits(layout: codec.Layout, max_cohort: int) -> MessageLimits:
    """Limits for a job whose model has `layout` and whose rounds invite at most `max_cohort` devices."""
    widest = pb.UpdateHeader(
        round=2**31, model_version=2**31, num_examples=2**31, train_loss=1.0, dtype="float32",
        layout=codec.layout_to_proto(layout), total_bytes=2**40,
    )  # fmt: skip
    header = 2 * widest.ByteSize() + 4096
    streams = {"UploadUpdate": codec.MAX_MESSAGE_BYTES, "UploadMaskedInput": codec.MAX_MESSAGE_BYTES}
    return MessageLimits(
        default=SMALL_REQUEST_BYTES,
        per_method={**streams, "ShareKeys": codec.MAX_MESSAGE_BYTES},
        # A masked input's header lists the neighbours it complains about: one slot number each at most.
        headers={"UploadUpdate": header, "UploadMaskedInput": SMALL_REQUEST_BYTES + 8 * max_cohort},
        header_rule="this job's layout needs",
    )


def malformed_counter(count: Callable[[str], None]) -> MalformedCounter:
    """A counter that logs on the aggregator's logger."""
    return MalformedCounter(count, logger=log)


def _corrupt_upload(index: int, malformed: Malformed) -> Exception:
    # Inside a stream a bad message is a corrupt upload: refused and counted like one, DATA_LOSS.
    return UpdateRejected(RejectReason.CORRUPT, f"message {index} of the stream: {malformed.describe()}")


def add_guarded_servicer(
    servicer: object, server: grpc.aio.Server, on_malformed: MalformedCounter, limits: MessageLimits
) -> None:
    guard.add_guarded_servicer(servicer, server, SERVICE.name, pb, on_malformed, limits, _corrupt_upload)
