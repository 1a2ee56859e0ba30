"""What a device sends, checked where it enters: attributes, versions, health reports. Each rule raises a
GatewayError whose message names the field and the rule; nothing a device sends is trusted further in."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from fedfleet.models.artifact import is_digest
from fedfleet.proto.refusals import Refusal

from .errors import GatewayError

MAX_APP_VERSION_CHARS = 64
#: Bounds that no real evaluation exceeds: a latency of an hour per example, or a billion held-out examples, is
#: a broken or hostile device, not a measurement.
MAX_LATENCY_MS = 3_600_000.0
MAX_EXAMPLES = 1_000_000_000
MAX_LOSS = 1e6


@dataclass(frozen=True)
class AttributeLimits:
    max_attributes: int = 32
    max_key_chars: int = 63
    max_value_chars: int = 256


class ActivationFailure(StrEnum):
    """Why a device could not activate its assigned version (NONE: it did)."""

    NONE = "none"
    DIGEST_MISMATCH = "digest_mismatch"
    SIZE_MISMATCH = "size_mismatch"
    UNTRUSTED_KEY = "untrusted_key"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED_ARTIFACT = "malformed_artifact"
    ARCHITECTURE_MISMATCH = "architecture_mismatch"
    LOAD_ERROR = "load_error"


_FAILURES: tuple[str, ...] = tuple(f.value for f in ActivationFailure)


@dataclass(frozen=True)
class HealthReport:
    version: str
    accuracy: float = 0.0
    loss: float = 0.0
    inference_latency_ms: float = 0.0
    examples: int = 0
    activation_failure: str = ActivationFailure.NONE  # an ActivationFailure value; checked by check_health


def check_attributes(attributes: Mapping[str, str], limits: AttributeLimits) -> dict[str, str]:
    if len(attributes) > limits.max_attributes:
        raise GatewayError(
            Refusal.BAD_ATTRIBUTES, f"attributes: {len(attributes)} given, at most {limits.max_attributes} allowed"
        )
    for key, value in attributes.items():
        if not 0 < len(key) <= limits.max_key_chars or not key.isprintable():
            raise GatewayError(
                Refusal.BAD_ATTRIBUTES,
                f"attributes: key {key[:80]!r} must be 1..{limits.max_key_chars} printable characters",
            )
        if len(value) > limits.max_value_chars or not value.isprintable():
            raise GatewayError(
                Refusal.BAD_ATTRIBUTES,
                f"attributes.{key}: the value must be at most {limits.max_value_chars} printable characters",
            )
    return dict(attributes)


def check_version(text: str, field: str, *, required: bool) -> str:
    """An artifact digest, or (when not required) empty."""
    if (text or required) and not is_digest(text):
        what = "an artifact digest" if required else "empty or an artifact digest"
        raise GatewayError(Refusal.BAD_REQUEST, f"{field}: must be {what} 'sha256:<64 lowercase hex>'")
    return text


def check_app_version(text: str) -> str:
    if len(text) > MAX_APP_VERSION_CHARS or not text.isprintable():
        raise GatewayError(
            Refusal.BAD_REQUEST, f"app_version: must be at most {MAX_APP_VERSION_CHARS} printable characters"
        )
    return text


def check_health(report: HealthReport) -> None:
    """The measurements of a report on an active version; a report of an activation failure carries none."""
    if not is_digest(report.version):
        raise _bad("version", "must be an artifact digest 'sha256:<64 lowercase hex>'")
    if report.activation_failure not in _FAILURES:
        given = report.activation_failure[:40]
        raise _bad("activation_failure", f"must be one of {', '.join(_FAILURES)}, got {given!r}")
    if report.activation_failure != ActivationFailure.NONE:
        return
    if not (math.isfinite(report.accuracy) and 0.0 <= report.accuracy <= 1.0):
        raise _bad("accuracy", f"must be within [0, 1], got {report.accuracy}")
    if not (math.isfinite(report.loss) and 0.0 <= report.loss <= MAX_LOSS):
        raise _bad("loss", f"must be a finite number within [0, {MAX_LOSS:g}], got {report.loss}")
    if not (math.isfinite(report.inference_latency_ms) and 0.0 <= report.inference_latency_ms <= MAX_LATENCY_MS):
        raise _bad("inference_latency_ms", f"must be within [0, {MAX_LATENCY_MS:g}], got {report.inference_latency_ms}")
    if not 1 <= report.examples <= MAX_EXAMPLES:
        raise _bad("examples", f"must be within [1, {MAX_EXAMPLES}], got {report.examples}")


def _bad(field: str, rule: str) -> GatewayError:
    return GatewayError(Refusal.BAD_HEALTH_REPORT, f"{field}: {rule}")
