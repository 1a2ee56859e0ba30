"""A completed job's final model, published to the fleet gateway, and what the job's status says about it.

When the job completes, the aggregator turns the `model.pt` it saved into the published artifact format
(fedfleet.models.artifact: data only, content-addressed), with the job, the round, the server's accuracy of
that very model and the ε spent as metadata, and streams it to the gateway named in its configuration with
the gateway's publish token (fedfleet.proto.fleet_admin, retrying while the gateway is unreachable). The job's
status then carries `status.model` (fedfleet.api.status.PublishedModel): the digest a ModelRollout names as its
candidate.

Publishing never decides whether the job completed: a job whose model could not be published is still
complete, and its outcome's message says the model is not published and why, so the operator can show it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedfleet.api.aggregator_config import GatewaySection
from fedfleet.api.status import NOT_PUBLISHED_MARK, PublishedModel
from fedfleet.engine.records import RoundRecord
from fedfleet.models.artifact import ArtifactError, ModelArtifact, decode, encode
from fedfleet.models.artifact_torch import from_model_file
from fedfleet.models.canonical import format_time
from fedfleet.persist.atomic import atomic_write_bytes
from fedfleet.proto.fleet_admin import PublishError, RetryPolicy, publish_model
from fedfleet.security.tokens import read_key

log = logging.getLogger("fedfleet.aggregator.publish")

JSON = dict[str, Any]


@dataclass(frozen=True)
class FinalModel:
    """What is known of the job's final model besides its weights."""

    path: Path  # model.pt, as JobModel.save wrote it
    job: str  # "namespace/name"
    round: int
    accuracy: float | None  # the server's accuracy of this model, None when it was not evaluated
    epsilon: float | None
    #: Where the artifact is kept once built (the state dir), None: build it afresh. The artifact names when
    #: it was made, so building it again would give other bytes and another digest than the one published.
    artifact_path: Path | None = None


@dataclass(frozen=True)
class Publication:
    """How publishing went: `model` when the gateway holds the artifact, else `error` says why not."""

    model: PublishedModel | None = None
    error: str | None = None


def final_model(
    path: Path,
    job: str,
    round_number: int,
    records: Sequence[RoundRecord],
    epsilon: float | None,
    artifact_path: Path | None = None,
) -> FinalModel:
    """The final model's facts. Its accuracy is the last round's server evaluation, and only when that round
    produced this model: a job that ended early (its privacy budget) may not have evaluated its last weights,
    and an earlier round's accuracy would describe another model."""
    last = records[-1] if records else None
    accuracy = last.accuracy if last is not None and last.round == round_number else None
    return FinalModel(path, job, round_number, _unit_interval(accuracy), _non_negative(epsilon), artifact_path)


def build_artifact(model: FinalModel, created: dt.datetime) -> ModelArtifact:
    """The artifact of the final model; ArtifactError when model.pt cannot be one."""
    return from_model_file(
        model.path,
        job=model.job,
        source=f"aggregator {model.job}",
        accuracy=model.accuracy,
        epsilon=model.epsilon,
        round_number=model.round,
        created=created,
    )


def publish_final_model(
    gateway: GatewaySection,
    model: FinalModel,
    *,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> Publication:
    """Build the artifact and publish it (blocking: run it on a worker thread). Never raises for what can go
    wrong on the way — a missing file, an unreachable or refusing gateway: the Publication says it."""
    try:
        artifact, data = package_final_model(model, now)
        ca_pem = gateway.ca_file.read_bytes()
        token = read_key(gateway.publish_token_file).hex()
    except ArtifactError as exc:
        return Publication(error=f"the final model cannot be packaged: {exc}")
    except OSError as exc:
        return Publication(error=f"cannot read {exc.filename}: {exc.strerror or exc}")
    except ValueError as exc:  # read_key: not a hex key
        return Publication(error=str(exc))

    def retrying(attempt: int, error: PublishError, delay: float) -> None:
        log.warning("attempt %d: %s; retrying in %.0fs", attempt, error, delay)

    try:
        digest = publish_model(gateway.address, ca_pem, token, data, policy=policy, sleep=sleep, on_retry=retrying)
    except PublishError as exc:
        return Publication(error=str(exc))
    published = PublishedModel(
        digest=digest,
        size=len(data),
        round=model.round,
        accuracy=model.accuracy,
        epsilon=model.epsilon,
        architecture=artifact.architecture,
        published_at=format_time(now()),
    )
    log.info("published the final model to %s: %s (%d bytes)", gateway.address, digest, len(data))
    return Publication(model=published)


def package_final_model(model: FinalModel, now: Callable[[], dt.datetime]) -> tuple[ModelArtifact, bytes]:
    """The artifact kept from an earlier attempt when it is this model's (same job and round), else a new one,
    kept for the next attempt. ArtifactError when model.pt cannot be one; OSError when nothing can be written."""
    kept = model.artifact_path
    if kept is not None and kept.is_file():
        data = kept.read_bytes()
        try:
            artifact = decode(data)
        except ArtifactError:
            artifact = None  # damaged: built again below
        if artifact is not None and (artifact.metadata.job, artifact.metadata.round) == (model.job, model.round):
            return artifact, data
    artifact = build_artifact(model, now())
    data = encode(artifact)
    if kept is not None:
        atomic_write_bytes(kept, data)
    return artifact, data


def with_publication(outcome: JSON, publication: Publication) -> JSON:
    """The status patch that ends the job (`outcome_status`), with `model` when it was published, or with the
    outcome's message saying the model is not published (pure)."""
    if publication.model is not None:
        return {**outcome, "model": publication.model.model_dump(mode="json", by_alias=True, exclude_none=True)}
    ended = dict(outcome["outcome"])
    said = ended.get("message") or ""
    ended["message"] = "; ".join(part for part in (said, f"{NOT_PUBLISHED_MARK}{publication.error}") if part)
    return {**outcome, "outcome": ended}


def _unit_interval(value: float | None) -> float | None:
    return min(max(float(value), 0.0), 1.0) if value is not None and math.isfinite(value) else None


def _non_negative(value: float | None) -> float | None:
    return max(float(value), 0.0) if value is not None and math.isfinite(value) else None
