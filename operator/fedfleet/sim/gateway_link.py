"""A device's fleet link straight into a `Gateway` object in the same process: the simulated fleet of the embedded
runtime (`fedfleet rollout`) and the tests, with no sockets, TLS or tokens in between.

It makes exactly the calls the gRPC servicers make (fedfleet.gateway.service) with what a device would have
sent, so the gateway checks, counts and refuses them the same way; its refusals become the same `LinkError`s
the gRPC link raises (fedfleet.device.fleet_refusals). It lives here, above the production floor, because the
device SDK may not import the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from fedfleet.device.fleet_refusals import refusal_error
from fedfleet.device.model_updates import (
    CheckInAnswer,
    HealthReport,
    LinkError,
    ModelOffer,
    release_from_parts,
)
from fedfleet.gateway.core import Gateway
from fedfleet.gateway.errors import GatewayError
from fedfleet.gateway.inputs import ActivationFailure
from fedfleet.gateway.inputs import HealthReport as GatewayHealthReport
from fedfleet.gateway.watchers import DeviceAssignment


class GatewayLink:
    """One device's calls into `gateway` for `fleet`, as the device `device_id` (what its token would say)."""

    def __init__(self, gateway: Gateway, fleet: str, device_id: str, app_version: str = "") -> None:
        self.gateway = gateway
        self.fleet = fleet
        self.device_id = device_id
        self.app_version = app_version

    async def check_in(self, attributes: Mapping[str, str], running: str | None) -> CheckInAnswer:
        try:
            answer = self.gateway.check_in(self.fleet, self.device_id, attributes, running or "", self.app_version)
        except GatewayError as err:
            raise _link_error(err) from None
        return CheckInAnswer(offer_of(answer), self.gateway.settings.check_in_interval_seconds)

    async def watch(self, attributes: Mapping[str, str]) -> AsyncIterator[ModelOffer | None]:
        try:
            async for answer in self.gateway.subscribe(self.fleet, self.device_id, attributes):
                yield offer_of(answer)
        except GatewayError as err:
            raise _link_error(err) from None

    async def download(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        try:
            _, chunks = self.gateway.download(self.fleet, digest, offset)
        except GatewayError as err:
            raise _link_error(err) from None
        for _, data in chunks:
            yield data

    async def report_health(self, report: HealthReport, attributes: Mapping[str, str]) -> None:
        if report.measurement is not None:
            m = report.measurement
            sent = GatewayHealthReport(
                version=report.version,
                accuracy=m.accuracy,
                loss=m.loss,
                inference_latency_ms=m.latency_seconds * 1000.0,
                examples=m.examples,
            )
        else:
            assert report.failure is not None
            sent = GatewayHealthReport(version=report.version, activation_failure=_failure(report.failure.reason))
        try:
            self.gateway.report_health(self.fleet, self.device_id, attributes, sent)
        except GatewayError as err:
            raise _link_error(err) from None


def offer_of(answer: DeviceAssignment) -> ModelOffer | None:
    a = answer.assignment
    if not a.version:
        return None
    r = answer.release
    release = release_from_parts(r.record, r.signature, r.key_id) if r is not None else None
    return ModelOffer(a.version, str(a.role), a.rollout or "", a.revision, release, answer.generation)


def _failure(reason: str) -> str:
    known = {f.value for f in ActivationFailure}
    return reason if reason in known else ActivationFailure.LOAD_ERROR.value


def _link_error(err: GatewayError) -> LinkError:
    return refusal_error(err.reason, f"{err.reason.value}: {err.message}")
