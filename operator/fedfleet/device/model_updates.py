"""The device's side of model rollouts: follow the fleet's assignment, download, verify, swap, report health.

    link = GrpcFleetLink("gateway:443", token=..., root_certificates=ca_pem)
    updater = ModelUpdater(link, attributes={"os": "android", ...}, trusted=trusted_keys,
                           evaluator=HeldOutEvaluator(x_holdout, y_holdout))
    await updater.run()              # follows the assignment until cancelled (or `stop` is set)
    updater.running.module(x)        # the app predicts with whatever model the device runs now

The updater talks to the fleet through a `FleetLink` (gRPC in fedfleet.device.fleet_grpc; in process for the
simulated fleet) and never trusts it: an artifact is activated only once `verify_download` has found its bytes
to be exactly those of a release record signed by a key the device trusts, of the architecture the record
names. A bad artifact is refused and reported (an activation failure with the verifier's reason) and the
device stays on what it ran. The model it replaced is kept, so an assignment back to that version is a swap,
with no download. After each activation the device evaluates the model on its own held-out data and reports
health for exactly the version it runs, which is the version it is assigned.

The newest assignment wins: one for another version that arrives during a download cancels it, so an abort
reaches a device at once however large the candidate is; the bytes already received are kept, and a return to
that version resumes where it stopped. Everything is bounded: the artifact's size (by the signed record and
the device's limit), the chunks, the time of each call and of a whole download, the reports held back while
the link is down and the refusals remembered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from fedfleet.models.artifact import ArtifactError, ModelArtifact, ReleaseRecord, SignedRelease
from fedfleet.models.artifact_torch import to_module
from fedfleet.proto.refusals import Refusal
from fedfleet.security.releases import RejectionReason, ReleaseRejected, verify_download, verify_release
from fedfleet.security.signing import SignatureError, SignatureProblem, TrustedKeys

from .artifact_download import DownloadLimits, DownloadRefused, PartialDownload
from .clock import Clock, WallClock
from .model_health import HealthEvaluator, HealthMeasurement
from .retry import Backoff

log = logging.getLogger("fedfleet.device.rollout")

#: Digests whose refusal a device remembers, so that a bad artifact is not downloaded again on every check-in.
MAX_REMEMBERED_REFUSALS = 64
#: Health reports a device keeps while its link is down; the oldest is dropped first.
MAX_PENDING_REPORTS = 8
#: Bounds on the check-in interval a gateway asks for: a device neither hammers it nor vanishes for days.
MIN_CHECK_IN_SECONDS = 1.0
MAX_CHECK_IN_SECONDS = 86_400.0
DEFAULT_CHECK_IN_SECONDS = 60.0


class LinkError(Exception):
    """A fleet link call that failed. `transient`: worth retrying (connection lost, deadline passed, gateway
    restarting, nothing published yet); `fatal`: the gateway refuses this device for good (bad or expired
    token); neither: the gateway refused this one call (the reason says why)."""

    def __init__(self, message: str, *, transient: bool, fatal: bool = False, reason: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.fatal = fatal
        self.reason = reason  # the gateway's machine-readable reason (fedfleet.proto.refusals), when it sent one


@dataclass(frozen=True)
class ModelOffer:
    """What the fleet tells a device to run: a version (an artifact digest), its role in a rollout, which rollout
    and revision decided, and the signed release record the download is checked against. `release` is None
    when the record that came with the offer could not even be read: such an offer is refused as unsigned.

    The gateway judges a rollout step on the reports of its generation (each change of the fleet's view starts
    one), so a device reports once per generation it hears of, by the watch stream or a periodic check-in."""

    version: str
    role: str  # stable, canary, control or outside (fedfleet.rollout.assignment.Role)
    rollout: str  # "" outside every rollout
    revision: int
    release: SignedRelease | None
    generation: int = 0  # of the fleet view the gateway computed it from: each one hears from every device


def release_from_parts(record: bytes, signature: bytes, key_id: str) -> SignedRelease | None:
    """The signed release as the gateway relays it (the record's exact bytes, the signature, the key id); None
    when the record is not a readable release record, or names another key than the one it came with. Whether a
    trusted key signed it is for the updater to check."""
    try:
        parsed = ReleaseRecord.from_canonical_bytes(record)
        signed = SignedRelease(parsed, signature)
    except ArtifactError:
        return None
    return signed if parsed.key_id == key_id else None


@dataclass(frozen=True)
class CheckInAnswer:
    offer: ModelOffer | None  # None: the fleet has no model for this device yet
    interval_seconds: float  # check in again within this

    @property
    def bounded_interval(self) -> float:
        value = self.interval_seconds
        if not math.isfinite(value) or value <= 0:
            return DEFAULT_CHECK_IN_SECONDS
        return min(MAX_CHECK_IN_SECONDS, max(MIN_CHECK_IN_SECONDS, value))


#: A verified model that would not load or run on the device's own data (not in `RejectionReason`: the
#: verifier had nothing against it).
LOAD_ERROR = "load_error"


@dataclass(frozen=True)
class ActivationFailure:
    reason: str  # a fedfleet.security.releases.RejectionReason, or LOAD_ERROR
    message: str


@dataclass(frozen=True)
class HealthReport:
    """A device's word on the version it is assigned: a measurement after activating it, or why it did not."""

    version: str
    measurement: HealthMeasurement | None = None
    failure: ActivationFailure | None = None

    def __post_init__(self) -> None:
        if (self.measurement is None) == (self.failure is None):
            raise ValueError("a health report carries either a measurement or an activation failure")


class FleetLink(Protocol):
    """The calls a device makes to the fleet gateway, whatever carries them. Failures raise LinkError."""

    async def check_in(self, attributes: Mapping[str, str], running: str | None) -> CheckInAnswer:
        """Say the device is here and what it runs; answers its assignment."""

    def watch(self, attributes: Mapping[str, str]) -> AsyncIterator[ModelOffer | None]:
        """The device's assignment, now and on every change, until the stream breaks (LinkError) or ends."""

    def download(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        """The artifact with this digest from `offset` on, in chunks."""

    async def report_health(self, report: HealthReport, attributes: Mapping[str, str]) -> None: ...


ModelLoader = Callable[[str, ModelArtifact], nn.Module]
"""Builds the module of a verified artifact, given its digest. A simulated fleet shares them by digest."""


def build_module(digest: str, artifact: ModelArtifact) -> nn.Module:
    """The default loader: the device builds its own module."""
    return to_module(artifact)


@dataclass(frozen=True)
class RunningModel:
    version: str
    module: nn.Module = field(repr=False)


@dataclass
class UpdaterStats:
    downloads: int = 0  # artifacts downloaded completely
    resumed_downloads: int = 0  # download calls that started past offset 0
    downloaded_bytes: int = 0
    activations: int = 0  # every switch of the running model, rollbacks included
    rollbacks: int = 0  # swaps to the kept previous model, without a download
    refused: dict[str, int] = field(default_factory=dict)  # activation failures by reason
    unavailable: int = 0  # assignments that could not be fetched (gave up, or the gateway refused the download)
    health_reports: int = 0  # reports the gateway took
    reports_dropped: int = 0  # reports the gateway refused, or that went stale before the link came back
    check_ins: int = 0
    reconnects: int = 0


class ModelUpdater:
    """One device's model: what it runs, what it ran before, and the loop that keeps it on its assignment."""

    def __init__(
        self,
        link: FleetLink,
        *,
        attributes: Mapping[str, str],
        trusted: TrustedKeys,
        evaluator: HealthEvaluator,
        clock: Clock | None = None,
        limits: DownloadLimits | None = None,
        backoff: Backoff | None = None,
        loader: ModelLoader = build_module,
        reports_health: bool = True,
        report_every_seconds: float | None = None,
        name: str = "device",
    ) -> None:
        if report_every_seconds is not None and not (
            math.isfinite(report_every_seconds) and report_every_seconds >= MIN_CHECK_IN_SECONDS
        ):
            raise ValueError(
                f"report_every_seconds must be None or a finite number >= {MIN_CHECK_IN_SECONDS:g}, "
                f"got {report_every_seconds}"
            )
        self.link = link  # a simulated device gets a new one each time it comes back online
        self.attributes = dict(attributes)
        self.trusted = trusted
        self.evaluator = evaluator
        self.clock = clock or WallClock()
        self.limits = limits or DownloadLimits()
        self.backoff = backoff or Backoff()
        self.loader = loader
        self.reports_health = reports_health  # False: a simulated device that never reports (for tests)
        # Besides once per generation: again at the first check-in of every period this long (None: never), so
        # an analysis over a trailing window keeps seeing devices whose assignment stays the same.
        self.report_every_seconds = report_every_seconds
        self.name = name  # for logs
        self.stats = UpdaterStats()
        self._running: RunningModel | None = None
        self._previous: RunningModel | None = None
        self._partial: PartialDownload | None = None
        self._refused: dict[tuple[str, bytes], ActivationFailure] = {}  # (version, signature) -> why, oldest first
        self._reported: tuple[str, str, int, int, int] | None = None  # _report_key of the last report
        self._pending: list[HealthReport] = []
        self._assigned: ModelOffer | None = None
        self._inbox: asyncio.Queue[ModelOffer | None] | None = None  # assignments heard while following

    # ---- what the device runs ---------------------------------------------------------------------------

    @property
    def running(self) -> RunningModel | None:
        return self._running

    @property
    def running_version(self) -> str | None:
        return self._running.version if self._running else None

    @property
    def previous_version(self) -> str | None:
        return self._previous.version if self._previous else None

    @property
    def assigned(self) -> ModelOffer | None:
        """The newest assignment heard (the device may still be downloading it, or have refused it)."""
        return self._assigned

    # ---- following the fleet ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Follow the assignment until `stop` is set (or the task is cancelled): check in, apply the assignment,
        watch for changes and check in again every interval. On a lost connection back off (full jitter) and
        start over. Raises LinkError when the gateway refuses the device for good."""
        stop = stop or asyncio.Event()
        delays = self.backoff.delays()
        while not stop.is_set():
            try:
                answer = await self._check_in()
                delays = self.backoff.delays()  # connected: the next outage starts from the short delays
                await self._flush_pending()
                await _unless(stop, self._follow(answer, stop))
            except LinkError as err:
                if err.fatal:
                    raise
                log.info("%s: %s; checking in again", self.name, err)
            if stop.is_set():
                return
            self.stats.reconnects += 1
            await _unless(stop, self.clock.sleep(next(delays)))

    async def _check_in(self) -> CheckInAnswer:
        answer = await self.link.check_in(self.attributes, self.running_version)
        self.stats.check_ins += 1
        return answer

    async def _follow(self, answer: CheckInAnswer, stop: asyncio.Event) -> None:
        """Apply assignments as they come, from the watch stream and the periodic check-ins; a newer one for
        another version cancels the one being applied. Returns never: a broken stream raises LinkError."""
        inbox: asyncio.Queue[ModelOffer | None] = asyncio.Queue()
        self._inbox = inbox
        inbox.put_nowait(answer.offer)
        listening = asyncio.create_task(self._listen(inbox))
        checking = asyncio.create_task(self._check_in_every(answer.bounded_interval, inbox))
        applying: asyncio.Task[None] | None = None
        applying_to: ModelOffer | None = None  # the offer `applying` works on
        deferred: ModelOffer | None = None  # a newer offer of the same version, applied once `applying` is done
        receiving: asyncio.Task[ModelOffer | None] | None = None
        try:
            while True:
                receiving = asyncio.create_task(inbox.get())
                waits: set[asyncio.Future[Any]] = {receiving, listening, checking}
                if applying is not None:
                    waits.add(applying)
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if receiving not in done:
                    receiving.cancel()
                if applying is not None and applying.done():
                    applying.result()  # a LinkError ends this connection
                    applying = None
                    # The offer that waited for it goes next, unless a newer one arrived meanwhile (in the inbox,
                    # or just received): queued behind it, the older one would be taken as the newest.
                    if deferred is not None and receiving not in done and inbox.empty():
                        inbox.put_nowait(deferred)
                    deferred = None
                for task in (listening, checking):
                    if task in done:
                        task.result()  # a LinkError ends this connection
                        raise LinkError("the assignment stream ended", transient=True)
                if receiving not in done:
                    continue
                offer = receiving.result()
                while not inbox.empty():  # only the newest counts
                    offer = inbox.get_nowait()
                if stop.is_set():
                    return  # stopping (a device switched off): start nothing more
                if offer is None:
                    continue  # no model for this device (yet): keep what it runs
                self._assigned = offer
                if applying is not None:
                    if applying_to is not None and _same_version(applying_to, offer):
                        deferred = offer  # already on its way; its new generation is reported after
                        continue
                    await _cancel(applying)
                    deferred = None
                applying = asyncio.create_task(self.apply(offer))
                applying_to = offer
        finally:
            self._inbox = None
            if receiving is not None and not receiving.done():
                # Cancelled while waiting (the device went away): left pending, the getter would be collected
                # with its queue while still pending, which asyncio reports as an error.
                receiving.cancel()
            await _cancel(listening)
            await _cancel(checking)
            if applying is not None:
                await _cancel(applying)

    async def _listen(self, inbox: asyncio.Queue[ModelOffer | None]) -> None:
        async for offer in self.link.watch(self.attributes):
            inbox.put_nowait(offer)

    async def _check_in_every(self, interval: float, inbox: asyncio.Queue[ModelOffer | None]) -> None:
        """Check in within every interval the gateway asked for: it counts who runs what from check-ins, and the
        answer repairs an assignment change the stream might have lost."""
        while True:
            await self.clock.sleep(interval)
            answer = await self._check_in()
            interval = answer.bounded_interval
            inbox.put_nowait(answer.offer)

    async def apply(self, offer: ModelOffer) -> None:
        """Make the device run the offered version (or refuse it), then report health. Idempotent."""
        self._assigned = offer
        running, previous = self._running, self._previous
        if running is not None and running.version == offer.version:
            await self._report_measured(offer)  # a new rollout or revision hears from it too
            return
        if previous is not None and previous.version == offer.version:
            self._activate(previous)
            self.stats.rollbacks += 1
            log.info("%s: back on %s without a download", self.name, offer.version)
            await self._announce()
            await self._report_measured(offer)
            return
        refusal = self._refused.get(_refusal_key(offer))
        if refusal is not None:
            await self._report_failure(offer, refusal)
            return
        try:
            module = await self._fetch(offer)
        except ReleaseRejected as err:
            await self._refuse(offer, ActivationFailure(err.reason.value, err.message))
            return
        except DownloadRefused as err:
            # More bytes than the signed record states, or than this device takes: not the promised artifact.
            await self._refuse(offer, ActivationFailure(RejectionReason.SIZE_MISMATCH.value, str(err)))
            return
        except DownloadUnavailable as err:
            # Nothing is known to be wrong with the artifact; the link is. The next check-in tries again.
            log.info("%s: could not fetch %s: %s", self.name, offer.version, err)
            self.stats.unavailable += 1
            return
        self._activate(RunningModel(offer.version, module))
        log.info("%s: activated %s (%s)", self.name, offer.version, offer.role)
        await self._announce()
        await self._report_measured(offer)

    async def _fetch(self, offer: ModelOffer) -> nn.Module:
        """Download and verify the offered artifact; its module, built only once the checks passed."""
        signed = offer.release
        if signed is None:
            raise ReleaseRejected(RejectionReason.BAD_SIGNATURE, "the release record that came with it is unreadable")
        record = signed.record
        if record.version != offer.version:
            raise ReleaseRejected(
                RejectionReason.DIGEST_MISMATCH, f"the release is of {record.version}, not of {offer.version}"
            )
        # The signature first: until it verifies, the size is a claim of unknown origin, and the device would
        # spend bandwidth and memory on an attacker's number. (verify_download checks it again, cheaply.)
        _check_signature(signed, self.trusted)
        data = await self._download(record.digest, record.size)
        artifact = verify_download(data, signed, self.trusted, max_bytes=self.limits.max_bytes)
        try:
            return self.loader(record.digest, artifact)
        except ValueError as err:  # ArtifactError: an architecture or layout this device cannot build
            raise ReleaseRejected(RejectionReason.ARCHITECTURE_MISMATCH, str(err)) from None

    def _activate(self, model: RunningModel) -> None:
        # One synchronous assignment: the app sees the old model or the new one, never a mix.
        if self._running is model:
            return
        if self._running is not None:
            self._previous = self._running
        self._running = model
        self.stats.activations += 1

    async def _announce(self) -> None:
        """Tell the gateway what the device runs now (it counts devices per version from check-ins)."""
        answer = await self._check_in()
        if self._inbox is not None and answer.offer is not None and answer.offer != self._assigned:
            self._inbox.put_nowait(answer.offer)

    # ---- download ---------------------------------------------------------------------------------------

    async def _download(self, digest: str, size: int) -> bytes:
        """The whole artifact, resumed at the offset already held after a broken or truncated stream."""
        partial = self._partial
        if partial is None or partial.digest != digest or partial.size != size:
            partial = PartialDownload(digest, size, self.limits)  # DownloadRefused when larger than allowed
            self._partial = partial
        started = self.clock.now()
        delays = self.backoff.delays()
        fruitless = 0
        while not partial.is_complete():
            if self.clock.now() - started > self.limits.total_seconds:
                raise DownloadUnavailable(
                    f"{partial.offset} of {size} bytes after {self.limits.total_seconds:g}s, the device's limit"
                )
            before = partial.offset
            if before > 0:
                self.stats.resumed_downloads += 1
            problem = "the stream ended early"
            try:
                async with asyncio.timeout(self.limits.call_seconds):
                    async for chunk in self.link.download(digest, before):
                        partial.add(chunk)
                        if partial.is_complete():
                            break
            except LinkError as err:
                if err.fatal:
                    raise
                if not err.transient:
                    raise DownloadUnavailable(f"the gateway refused the download: {err}") from None
                problem = str(err)
            except TimeoutError:
                problem = f"no complete stream within {self.limits.call_seconds:g}s"
            except DownloadRefused:
                self._partial = None  # nothing a misbehaving stream sent is kept
                raise
            self.stats.downloaded_bytes += partial.offset - before
            if partial.is_complete():
                break
            fruitless = 0 if partial.offset > before else fruitless + 1
            if fruitless >= self.limits.attempts:
                raise DownloadUnavailable(
                    f"{partial.offset} of {size} bytes; {fruitless} calls in a row brought nothing (last: {problem})"
                )
            if partial.offset == before:
                await self.clock.sleep(next(delays))
        self._partial = None
        self.stats.downloads += 1
        return partial.data()

    # ---- reports ----------------------------------------------------------------------------------------

    async def _refuse(self, offer: ModelOffer, failure: ActivationFailure) -> None:
        log.warning("%s: refused %s: %s: %s", self.name, offer.version, failure.reason, failure.message)
        self.stats.refused[failure.reason] = self.stats.refused.get(failure.reason, 0) + 1
        if len(self._refused) >= MAX_REMEMBERED_REFUSALS:
            self._refused.pop(next(iter(self._refused)))
        self._refused[_refusal_key(offer)] = failure
        await self._report_failure(offer, failure)

    async def _report_failure(self, offer: ModelOffer, failure: ActivationFailure) -> None:
        key = self._report_key(offer)
        if self._reported == key:
            return
        self._reported = key
        await self._send(HealthReport(offer.version, failure=failure))

    async def _report_measured(self, offer: ModelOffer) -> None:
        """Evaluate the running model and report it, once per key (version, rollout, revision, generation and,
        with report_every_seconds, period)."""
        running = self._running
        key = self._report_key(offer)
        if running is None or running.version != offer.version or self._reported == key:
            return
        try:
            measurement = await self.evaluator.measure(running.module)
        except (RuntimeError, ValueError) as err:
            # A verified model that does not run on this device's data (its output does not fit the labels, say)
            # is of no use to the app: go back to what ran before and say why.
            if self._running is running:
                self._running, self._previous = self._previous, None
                self.stats.activations += 1
            await self._refuse(offer, ActivationFailure(LOAD_ERROR, f"{type(err).__name__}: {err}"))
            await self._announce()
            return
        if self._running is not running:
            return  # switched while evaluating: this measures a model the device no longer runs
        self._reported = key
        await self._send(HealthReport(running.version, measurement=measurement))

    def _report_key(self, offer: ModelOffer) -> tuple[str, str, int, int, int]:
        """What a report is about: a device reports once per key. The period counts only with report_every."""
        every = self.report_every_seconds
        period = int(self.clock.now() // every) if every is not None else 0
        return offer.version, offer.rollout, offer.revision, offer.generation, period

    async def _send(self, report: HealthReport) -> None:
        if not self.reports_health:
            return
        try:
            await self.link.report_health(report, self.attributes)
        except LinkError as err:
            if err.fatal:
                raise
            if not err.transient:
                log.info("%s: health report on %s refused: %s", self.name, report.version, err)
                self.stats.reports_dropped += 1
                if err.reason == Refusal.REPORT_TOO_FREQUENT:
                    self._reported = None  # not wrong, only early: the next check-in's answer tries again
                return
            if len(self._pending) >= MAX_PENDING_REPORTS:
                self._pending.pop(0)
                self.stats.reports_dropped += 1
            self._pending.append(report)
            raise
        self.stats.health_reports += 1

    async def _flush_pending(self) -> None:
        """Send the reports a lost connection held back. A measurement of a model the device no longer runs is
        stale (the gateway takes reports on the assigned version only) and is dropped."""
        pending, self._pending = self._pending, []
        for i, report in enumerate(pending):
            if report.measurement is not None and report.version != self.running_version:
                self.stats.reports_dropped += 1
                continue
            try:
                await self._send(report)
            except LinkError:
                self._pending = [*pending[i + 1 :], *self._pending][-MAX_PENDING_REPORTS:]
                raise


def _check_signature(signed: SignedRelease, trusted: TrustedKeys) -> None:
    try:
        verify_release(signed, trusted)
    except SignatureError as err:
        untrusted = err.problem is SignatureProblem.UNTRUSTED_KEY
        reason = RejectionReason.UNTRUSTED_KEY if untrusted else RejectionReason.BAD_SIGNATURE
        raise ReleaseRejected(reason, f"release of {signed.record.version}: {err.message}") from None


class DownloadUnavailable(Exception):
    """The artifact could not be fetched within the device's limits; nothing is known against it."""


def _refusal_key(offer: ModelOffer) -> tuple[str, bytes]:
    """A refusal holds for this version under this signature: a release signed again (a rotated key, say) is
    a new chance."""
    return offer.version, offer.release.signature if offer.release is not None else b""


def _same_version(a: ModelOffer, b: ModelOffer) -> bool:
    return a.version == b.version


async def _cancel(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, LinkError):
        await task


async def _unless(stop: asyncio.Event, work: Awaitable[None]) -> None:
    """Await `work` unless `stop` is set first (then cancel it). Its exceptions propagate."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        task.result()
