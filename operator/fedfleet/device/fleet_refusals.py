"""What a device does about each refusal of the fleet gateway: try again later, stop for good, or drop the one
call. Both fleet links (gRPC, and in process for the simulated fleet) read the gateway's reason
(fedfleet.proto.refusals) through here, so a device behaves the same whichever carries its calls.
"""

from __future__ import annotations

from fedfleet.proto.refusals import Refusal

from .model_updates import LinkError

#: Refusals a fresh credential or another configuration would fix, not a retry: the device stops and says why.
FATAL: frozenset[Refusal] = frozenset(
    {
        Refusal.TOKEN_MISSING,
        Refusal.TOKEN_MALFORMED,
        Refusal.TOKEN_BAD_SIGNATURE,
        Refusal.TOKEN_WRONG_JOB,
        Refusal.TOKEN_WRONG_FLEET,
        Refusal.TOKEN_EXPIRED,
        Refusal.DEVICE_MISMATCH,
        Refusal.UNKNOWN_FLEET,
        Refusal.BAD_ATTRIBUTES,  # the device's own attributes: retrying sends the same ones
    }
)
#: Refusals that pass by themselves: nothing is published yet, the gateway is full for the moment.
TRANSIENT: frozenset[Refusal] = frozenset({Refusal.NO_FLEET_VIEW, Refusal.TOO_MANY_WATCHES, Refusal.BUSY})


def refusal_error(reason: Refusal | None, message: str, *, transient_by_status: bool = False) -> LinkError:
    """The LinkError for a refusal with this reason. Without a known reason the transport's status decides
    (`transient_by_status`: a connection lost, a deadline passed)."""
    if reason is not None and reason in FATAL:
        return LinkError(message, transient=False, fatal=True, reason=reason.value)
    transient = reason in TRANSIENT if reason is not None else transient_by_status
    return LinkError(message, transient=transient, reason=reason.value if reason is not None else None)
