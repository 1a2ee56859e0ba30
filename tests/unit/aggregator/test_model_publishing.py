"""A completed job's final model published to a live gateway over gRPC and TLS: the artifact in the gateway's
store, the metadata it carries, the `status.model` it produces; and every way it can fail ending in a
Publication that says why, never an exception."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from fedfleet.aggregator.k8s_status import outcome_status
from fedfleet.aggregator.model_publishing import (
    FinalModel,
    Publication,
    final_model,
    package_final_model,
    publish_final_model,
    with_publication,
)
from fedfleet.api.aggregator_config import GatewaySection
from fedfleet.api.status import NOT_PUBLISHED_MARK, FederatedJobStatus, PublishedModel
from fedfleet.engine.records import RoundRecord
from fedfleet.models.artifact import decode
from fedfleet.models.job_model import JobModel
from fedfleet.proto.fleet_admin import RetryPolicy
from fedfleet.security.certs import generate_ca
from fedfleet.security.tokens import write_key
from gateway_support import start_gateway

NOW = dt.datetime(2030, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
ONE_TRY = RetryPolicy(attempts=1, attempt_seconds=30.0)


def record(round_number: int, accuracy: float | None) -> RoundRecord:
    return RoundRecord(
        round=round_number, succeeded=True, accuracy=accuracy, loss=None, train_loss=None, federated_accuracy=None,
        federated_loss=None, invited=4, participants=3, dropped=1, late=0, rejected=0, bytes_sent=0,
        bytes_received=0, sim_seconds=1.0, wall_seconds=1.0,
    )  # fmt: skip


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    job_model = JobModel("logistic", (1, 8, 8), 10, init_seed=3)
    weights = job_model.initial_weights() + np.float32(0.25)
    return job_model.save(tmp_path / "state" / "model.pt", weights.astype(np.float32), round_number=3)


def test_the_accuracy_is_the_final_models_only() -> None:
    path = Path("model.pt")
    evaluated = final_model(path, "team/job", 3, [record(2, 0.7), record(3, 0.9)], 1.25)
    assert (evaluated.round, evaluated.accuracy, evaluated.epsilon) == (3, 0.9, 1.25)
    # The last record is of round 2: the model of round 3 was never evaluated (an early stop).
    assert final_model(path, "team/job", 3, [record(1, 0.6), record(2, 0.7)], None).accuracy is None
    assert final_model(path, "team/job", 3, [record(3, None)], None).accuracy is None
    assert final_model(path, "team/job", 0, [], None).accuracy is None
    clamped = final_model(path, "j", 1, [record(1, 1.0000001)], float("nan"))
    assert (clamped.accuracy, clamped.epsilon) == (1.0, None)


def test_publishing_stores_the_artifact_and_describes_it_for_the_status(tmp_path: Path, model_file: Path) -> None:
    async def scenario() -> tuple[Publication, bytes | None]:
        live = await start_gateway(tmp_path / "gateway")
        try:
            gateway = _section(tmp_path, live.target, live.ca_pem, live.publish_secret)
            model = FinalModel(model_file, "team-a/digits", 3, 0.875, 1.5)
            publication = await asyncio.to_thread(publish_final_model, gateway, model, policy=ONE_TRY, now=lambda: NOW)
            stored = None
            if publication.model is not None and live.store.has(publication.model.digest):
                stored = live.store.read_chunk(publication.model.digest, 0, live.store.size(publication.model.digest))
            return publication, stored
        finally:
            await live.app.stop()

    publication, stored = asyncio.run(scenario())
    assert publication.error is None and publication.model is not None and stored is not None
    published = publication.model
    assert published.size == len(stored) and published.digest.startswith("sha256:")
    artifact = decode(stored)
    meta = artifact.metadata
    assert (meta.job, meta.round, meta.accuracy, meta.epsilon) == ("team-a/digits", 3, 0.875, 1.5)
    assert meta.source == "aggregator team-a/digits" and meta.created == "2030-05-06T07:08:09Z"
    assert (published.architecture, published.published_at) == ("logistic", "2030-05-06T07:08:09Z")

    status = with_publication(outcome_status("RoundsCompleted", "3 rounds finished"), publication)
    read_back = FederatedJobStatus.model_validate(status)
    assert read_back.model == published and read_back.outcome is not None
    assert read_back.outcome.message == "3 rounds finished"


def test_a_model_without_accuracy_or_epsilon_leaves_them_out_of_the_status() -> None:
    published = PublishedModel(
        digest="sha256:" + "a" * 64, size=100, round=2, accuracy=None, epsilon=None, architecture="cnn",
        published_at="2030-05-06T07:08:09Z",
    )  # fmt: skip
    status = with_publication(outcome_status("RoundsCompleted"), Publication(model=published))
    assert set(status["model"]) == {"digest", "size", "round", "architecture", "publishedAt"}


def test_an_unreachable_gateway_leaves_the_job_complete_with_the_reason(tmp_path: Path, model_file: Path) -> None:
    gateway = _section(tmp_path, "127.0.0.1:1", generate_ca("x").cert_pem, "ab" * 32)
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, attempt_seconds=10.0, initial_backoff=0.5, max_backoff=1.0)
    publication = publish_final_model(gateway, FinalModel(model_file, "j", 1, None, None), policy=policy,
                                      sleep=waits.append)  # fmt: skip
    assert publication.model is None and waits == [0.5, 1.0]
    assert (
        publication.error is not None and "127.0.0.1:1" in publication.error and "gave up after 3" in publication.error
    )

    status = with_publication(outcome_status("RoundsCompleted", "3 rounds finished"), publication)
    assert "model" not in status
    message = status["outcome"]["message"]
    assert message.startswith("3 rounds finished; " + NOT_PUBLISHED_MARK) and "gave up after 3" in message
    assert FederatedJobStatus.model_validate(status).outcome is not None  # still a valid outcome


def test_what_cannot_be_read_is_said_not_raised(tmp_path: Path, model_file: Path) -> None:
    gateway = _section(tmp_path, "127.0.0.1:1", generate_ca("x").cert_pem, "ab" * 32)
    missing = publish_final_model(gateway, FinalModel(tmp_path / "nope.pt", "j", 1, None, None), policy=ONE_TRY)
    assert missing.error is not None and "cannot be packaged" in missing.error and "nope.pt" in missing.error
    (tmp_path / "publish.token").write_text("not hex\n")
    bad_token = publish_final_model(gateway, FinalModel(model_file, "j", 1, None, None), policy=ONE_TRY)
    assert bad_token.error is not None and "must be hex text" in bad_token.error
    no_ca = gateway.model_copy(update={"ca_file": tmp_path / "absent.crt"})
    assert "absent.crt" in (publish_final_model(no_ca, FinalModel(model_file, "j", 1, None, None)).error or "")


def _section(tmp_path: Path, address: str, ca_pem: bytes, publish_secret: str) -> GatewaySection:
    """The aggregator's gateway section, as the operator writes it: the gateway's CA and its publish token."""
    (tmp_path / "ca.crt").write_bytes(ca_pem)
    write_key(tmp_path / "publish.token", bytes.fromhex(publish_secret))
    return GatewaySection(address=address, ca_file=tmp_path / "ca.crt", publish_token_file=tmp_path / "publish.token")


def test_a_restarted_aggregator_publishes_the_same_bytes_again(tmp_path: Path, model_file: Path) -> None:
    kept = tmp_path / "state" / "model.artifact"
    later = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)

    async def publish_twice() -> tuple[Publication, Publication, int]:
        live = await start_gateway(tmp_path / "gateway")
        try:
            gateway = _section(tmp_path, live.target, live.ca_pem, live.publish_secret)
            model = FinalModel(model_file, "team-a/digits", 3, 0.875, None, kept)
            first = await asyncio.to_thread(publish_final_model, gateway, model, policy=ONE_TRY, now=lambda: NOW)
            # The pod restarted after publishing: the model is packaged at another time, but not again.
            again = await asyncio.to_thread(publish_final_model, gateway, model, policy=ONE_TRY, now=lambda: later)
            return first, again, len(list((tmp_path / "gateway" / "artifacts" / "sha256").glob("*[0-9a-f]")))
        finally:
            await live.app.stop()

    first, again, stored = asyncio.run(publish_twice())
    assert first.model is not None and again.model is not None
    assert again.model.digest == first.model.digest and stored == 1
    assert again.model.published_at == "2031-01-01T00:00:00Z"  # when it was published, this time
    assert decode(kept.read_bytes()).metadata.created == "2030-05-06T07:08:09Z"


def test_a_kept_artifact_of_another_round_or_damaged_is_built_again(tmp_path: Path, model_file: Path) -> None:
    kept = tmp_path / "model.artifact"
    round_two, _ = package_final_model(FinalModel(model_file, "j", 2, None, None, kept), lambda: NOW)
    round_three, data = package_final_model(FinalModel(model_file, "j", 3, None, None, kept), lambda: NOW)
    assert (round_two.metadata.round, round_three.metadata.round) == (2, 3) and kept.read_bytes() == data
    kept.write_bytes(data[:-7])
    rebuilt, again = package_final_model(FinalModel(model_file, "j", 3, None, None, kept), lambda: NOW)
    assert again == data and rebuilt.metadata.round == 3
