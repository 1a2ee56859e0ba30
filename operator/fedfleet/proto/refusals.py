"""Why a fedfleet server refused a call: the machine-readable reasons the aggregator and the fleet gateway send
and the device SDK branches on.

Every refusal from the aggregator's servicer (fedfleet.aggregator.service) carries a gRPC status code, a
one-line message for humans and, in the trailing metadata `fedfleet-error` (ERROR_KEY), one of these reasons.
The device SDK (fedfleet.device) reads them back to decide what to do next: check in again, count a late
update, leave a secure round quietly. Both sides import this module, so a reason is spelled once.

The strings are part of the fedfleet.v1 protocol: devices in the field match on them. Never change one; add
new ones (a device that does not know a reason treats the refusal by its status code alone).
"""

from __future__ import annotations

from enum import StrEnum

#: The trailing-metadata key that carries the reason.
ERROR_KEY = "fedfleet-error"


class Refusal(StrEnum):
    # --- who is calling ------------------------------------------------------------------------------------
    TOKEN_MISSING = "token_missing"  # no bearer token
    TOKEN_MALFORMED = "token_malformed"  # not a fedfleet device token
    TOKEN_BAD_SIGNATURE = "token_bad_signature"  # not signed with this job's key
    TOKEN_WRONG_JOB = "token_wrong_job"  # a token of another job
    TOKEN_EXPIRED = "token_expired"
    DEVICE_MISMATCH = "device_mismatch"  # the request names another device than the token
    NOT_CHECKED_IN = "not_checked_in"  # unknown device (the aggregator restarted): check in again
    BAD_REQUEST = "bad_request"  # a request field outside its range (NaN, infinite, negative)
    MALFORMED_MESSAGE = "malformed_message"  # the bytes do not parse as the method's message
    # --- model download and evaluation reports -------------------------------------------------------------
    MODEL_VERSION_GONE = "model_version_gone"  # that version is no longer served: ask for a new task
    BAD_REPORT = "bad_report"  # an evaluation report that breaks a rule
    # --- plaintext updates (one per fedfleet.engine.types.RejectReason) ------------------------------------
    NOT_IN_COHORT = "not_in_cohort"
    WRONG_ROUND = "wrong_round"
    DUPLICATE = "duplicate"
    SHAPE = "shape"
    DTYPE = "dtype"
    LAYOUT = "layout"
    NON_FINITE = "non_finite"
    BAD_WEIGHT = "bad_weight"
    TOO_LARGE = "too_large"
    CORRUPT = "corrupt"
    ROUND_CLOSED = "round_closed"  # the round closed before the update arrived: it counts as late
    SECURE_ONLY = "secure_only"  # a plaintext update in a round that runs secure aggregation
    SECAGG_MALFORMED = "secagg_malformed"  # a secure-aggregation message failed validation
    STALLED = "stalled"  # the upload stream sent nothing for longer than the idle timeout
    BUSY = "busy"  # another upload from the same device for the same round is still open
    # --- secure-aggregation stages -------------------------------------------------------------------------
    SECAGG_OFF = "secagg_off"  # a secure-aggregation call in a job without it
    SECAGG_EXCLUDED = "secagg_excluded"  # this device is no longer part of the round's protocol
    SECAGG_STAGE_CLOSED = "secagg_stage_closed"  # the stage the message belongs to is over
    SECAGG_ABORTED = "secagg_aborted"  # the round's protocol failed (too few devices left)
    # --- the fleet gateway (fedfleet.v1.Fleet, FleetAdmin); token refusals above apply to it too ------------
    TOKEN_WRONG_FLEET = "token_wrong_fleet"  # a token for a fleet this gateway does not serve, or a job's
    ADMIN_TOKEN_INVALID = "admin_token_invalid"  # FleetAdmin: neither the admin nor the publish secret
    PUBLISH_TOKEN_ONLY = "publish_token_only"  # FleetAdmin: the publish secret on a call other than PublishModel
    NO_FLEET_VIEW = "no_fleet_view"  # nothing is published for the fleet yet: keep running what you run
    BAD_ATTRIBUTES = "bad_attributes"  # too many device attributes, or a key or value too long
    NOT_ASSIGNED = "not_assigned"  # a health report for a version the device is not assigned
    BAD_HEALTH_REPORT = "bad_health_report"  # accuracy outside [0, 1], negative or NaN loss or latency, ...
    REPORT_TOO_FREQUENT = "report_too_frequent"  # another report on the same version came in too recently
    UNKNOWN_ARTIFACT = "unknown_artifact"  # no such artifact for this fleet
    OFFSET_OUT_OF_RANGE = "offset_out_of_range"  # a download offset beyond the artifact's size
    TOO_MANY_WATCHES = "too_many_watches"  # too many open WatchAssignment streams (this device's, or in total)
    UNKNOWN_FLEET = "unknown_fleet"  # FleetAdmin: a fleet this gateway does not serve
    BAD_FLEET_VIEW = "bad_fleet_view"  # FleetAdmin: a view or release that breaks a rule
    STALE_FLEET_VIEW = "stale_fleet_view"  # FleetAdmin: a generation older than the one held
    ARTIFACT_MISSING = "artifact_missing"  # FleetAdmin: a view names an artifact the gateway does not have
    PUBLISH_REJECTED = "publish_rejected"  # FleetAdmin: an upload whose size or digest is not what it announced


#: Refusals that end a device's part in a round without anything being wrong with the device.
LEFT_ROUND: frozenset[Refusal] = frozenset(
    {
        Refusal.SECAGG_EXCLUDED,
        Refusal.SECAGG_ABORTED,
        Refusal.SECAGG_STAGE_CLOSED,
        Refusal.ROUND_CLOSED,
        Refusal.WRONG_ROUND,
    }
)


def parse(value: str | None) -> Refusal | None:
    """The reason a refusal carried; None when there was none, or it is one this code does not know (a newer
    server's)."""
    if value is None:
        return None
    try:
        return Refusal(value)
    except ValueError:
        return None
