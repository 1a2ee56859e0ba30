"""The one error the gateway's core raises: a refusal, with the protocol's reason (fedfleet.proto.refusals) and
a one-line message naming the field and the rule. The gRPC servicers turn the reason into a status code; the
embedded runtime reads it as it is."""

from __future__ import annotations

from fedfleet.proto.refusals import Refusal


class GatewayError(Exception):
    def __init__(self, reason: Refusal, message: str, *, counted: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.counted = counted  # already counted where it was found (a malformed message inside a stream)
