"""Stable, monotonic cohorts: which devices of a rollout run the candidate, and which are held as control.

A device's bucket is HMAC-SHA256 keyed by the rollout's salt over the device id, its first 8 bytes read as a
big-endian integer, mod `BUCKETS`. Keyed, so nobody who knows device ids but not the salt can predict (or
choose ids to land in) the canary; a new salt per rollout, so the same devices are not always the first to
take a risk. The bucket depends on nothing else, so any gateway replica, and a restarted one, agrees.

Modulo bias: 2^64 is not a multiple of 10,000, so the first 2^64 mod 10,000 buckets get one preimage more
than the others, out of about 1.8·10^15 each. No bucket's probability differs from 1/10,000 by more than
10,000 / 2^64 ≈ 5.4·10^-16 relative to it — far below anything a fleet can measure.

The canary is the buckets [0, w) and the control cohort [5000, 5000 + w), with w = round(weight × 100):
a weight is a percentage with a resolution of one bucket (0.01 points; 0.5 is 50 buckets). Both ranges
grow from a fixed start, so raising the weight only adds devices to them. The control cohort runs the
stable version and has the canary's width so the gate compares like with like; it exists while w ≤ 5000
(weight ≤ 50). Above 50 the two ranges could not be disjoint and equal, so there is no control cohort and
the gate compares the canary against the rest of the stable fleet instead.
"""

from __future__ import annotations

import hashlib
import hmac

from fedfleet.rollout.errors import InvalidField, shown

BUCKETS = 10_000
#: Where the control cohort starts: half way, so it never meets a canary of weight ≤ 50.
CONTROL_START = BUCKETS // 2
#: Salts are short random strings the operator picks; a bound keeps a status field from carrying a payload.
MAX_SALT_CHARS = 256


def bucket(salt: str, device_id: str) -> int:
    """The device's bucket in [0, BUCKETS) for the rollout salted with `salt`."""
    if not isinstance(salt, str) or not salt:
        raise InvalidField("salt", "must be a non-empty string")
    if len(salt) > MAX_SALT_CHARS:
        raise InvalidField("salt", f"must be at most {MAX_SALT_CHARS} characters")
    if not isinstance(device_id, str) or not device_id:
        raise InvalidField("deviceId", "must be a non-empty string")
    digest = hmac.new(salt.encode("utf-8"), device_id.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def width(weight: float) -> int:
    """How many buckets a weight (a percentage, 0–100) covers."""
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise InvalidField("weight", "must be a number")
    if not 0 <= weight <= 100:  # also refuses NaN and infinities, and compares huge ints without overflow
        raise InvalidField("weight", f"must be between 0 and 100, not {shown(weight)}")
    # round(), not int(): 0.29 * 100 is 28.999999999999996 in floating point and means 29 buckets.
    # round(x * 100) never decreases as x grows, which is what keeps raising the weight monotonic.
    return round(weight * 100)


def in_canary(bucket: int, weight: float) -> bool:
    """Whether a device in `bucket` runs the candidate at `weight`."""
    return _checked(bucket) < width(weight)


def in_control(bucket: int, weight: float) -> bool:
    """Whether a device in `bucket` is held on the stable version as the canary's control cohort."""
    w = width(weight)
    if w > BUCKETS - CONTROL_START:
        return False  # above weight 50 there is no room for an equal, disjoint control cohort
    return CONTROL_START <= _checked(bucket) < CONTROL_START + w


def has_control(weight: float) -> bool:
    """Whether a control cohort exists at `weight` (so the gate knows what to compare the canary with)."""
    return width(weight) <= BUCKETS - CONTROL_START


def _checked(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < BUCKETS:
        raise InvalidField("bucket", f"must be an integer in [0, {BUCKETS})")
    return value
