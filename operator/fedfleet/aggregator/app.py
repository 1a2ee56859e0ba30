"""Wiring of one aggregator process: TLS and token key, the gRPC server (the Aggregator service, standard
health checking and reflection), the HTTP endpoints, the round loop over the gRPC transport, the run
journal in the state dir, publishing the final model to the fleet gateway, signals and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from fedfleet.api.aggregator_config import AggregatorConfig, GatewaySection
from fedfleet.api.federatedjob import FederatedJob
from fedfleet.api.termination import EXIT_COMPLETE, EXIT_STOPPED
from fedfleet.engine.journal import EndKind, RunEnd, RunJournal
from fedfleet.engine.loop import RoundCallback, RoundObserver, record_observer
from fedfleet.engine.records import RoundRecord
from fedfleet.engine.server import FederatedServer
from fedfleet.engine.types import RoundResult
from fedfleet.persist.checkpoint import CheckpointError
from fedfleet.proto import codec
from fedfleet.proto.http_endpoints import HttpEndpoints
from fedfleet.proto.v1 import aggregator_pb2 as pb
from fedfleet.security import tokens
from fedfleet.security.certs import TlsFiles, write_tls_files
from fedfleet.security.tokens import TokenVerifier, new_key, read_key, write_key

from .evaluation import ServerEvaluator
from .farewell import Farewell
from .guarded_handlers import MalformedCounter, MessageLimits, add_guarded_servicer, malformed_counter, message_limits
from .hub import DeviceHub, HubSettings
from .inputs import JobInputs, load_inputs
from .k8s_status import JSON, StatusReporter, outcome_status
from .metrics import AggregatorMetrics
from .model_publishing import Publication, final_model, publish_final_model, with_publication
from .privacy import PrivacyExporter, build_job_privacy, ledger_path, uses_privacy
from .service import AggregatorService
from .transport import serve_rounds

log = logging.getLogger("fedfleet.aggregator")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Aggregator"].full_name
#: How long in-flight calls may finish once shutdown starts.
SHUTDOWN_GRACE_SECONDS = 2.0
#: How often the farewell checks whether every device that may be waiting has been told DONE.
FAREWELL_CHECK_SECONDS = 0.05


@dataclass(frozen=True)
class Security:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    token_key: bytes


def job_identity(job: FederatedJob) -> str:
    return tokens.job_identity(job.metadata.name, job.metadata.namespace)


def prepare_security(config: AggregatorConfig, job: FederatedJob) -> Security:
    """Read the TLS files and the token key, creating them first when the config allows it."""
    tls = config.tls
    files = TlsFiles(ca_cert=tls.ca, server_cert=tls.cert, server_key=tls.key)
    if tls.generate and not (files.server_cert.exists() and files.server_key.exists()):
        hosts = list(dict.fromkeys([config.listen.host, "localhost", "127.0.0.1", *tls.hosts]))
        write_tls_files(files, job_identity(job), [h for h in hosts if h not in ("0.0.0.0", "::")])
    if config.auth.generate and not config.auth.token_key.exists():
        write_key(config.auth.token_key, new_key())
    try:
        cert, key = files.server_cert.read_bytes(), files.server_key.read_bytes()
        ca = files.ca_cert.read_bytes() if files.ca_cert.exists() else b""
    except OSError as exc:
        raise ValueError(f"TLS: cannot read {exc.filename}: {exc.strerror}") from None
    return Security(cert, key, ca, read_key(config.auth.token_key))


def create_grpc_server(
    service: AggregatorService,
    health_servicer: health.aio.HealthServicer,
    security: Security,
    host: str,
    port: int,
    limits: MessageLimits,
    on_malformed: MalformedCounter | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The TLS gRPC server with the Aggregator service, health checking and reflection; returns it and its port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", codec.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", codec.MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second aggregator on the same port must fail, not share it
        ]
    )
    add_guarded_servicer(service, server, on_malformed or malformed_counter(lambda method: None), limits)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    credentials = grpc.ssl_server_credentials([(security.key_pem, security.cert_pem)])
    try:
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    except RuntimeError:  # newer grpcio raises where older ones returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return server, bound


def job_inputs(config: AggregatorConfig, job: FederatedJob) -> JobInputs:
    """The model, held-out data and fleet size the configuration tells (see AggregatorConfig.evaluation_for)."""
    evaluation = config.evaluation_for(job.spec)
    return load_inputs(job.spec, evaluation.dataset, evaluation.test_samples, config.fleet_size_for(job.spec))


class AggregatorApp:
    def __init__(
        self,
        job: FederatedJob,
        config: AggregatorConfig,
        security: Security,
        *,
        inputs: JobInputs | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.job = job
        self.config = config
        self.security = security
        self.inputs = inputs or job_inputs(config, job)
        self.registry = registry or CollectorRegistry()
        self.metrics = AggregatorMetrics(self.registry)
        self.journal = RunJournal(config.state_dir)
        self.paths = self.journal.paths
        settings = HubSettings(
            time_scale=config.time_scale,
            min_devices=config.min_devices,
            settle_seconds=config.settle_seconds,
            poll_seconds=config.poll_seconds,
            device_ttl_seconds=config.device_ttl_seconds,
            upload_idle_seconds=config.upload_idle_seconds,
            max_update_bytes=config.max_update_bytes,
        )
        self.identity = job_identity(job)
        self.server = FederatedServer(job.spec, self.inputs.model.initial_weights())
        self.privacy_metrics: PrivacyExporter | None = None
        if uses_privacy(job):
            ledger = ledger_path(config.ledger_path, config.state_dir)
            self.server.privacy = build_job_privacy(
                job, self.inputs.fleet_size, ledger, f"{self.identity}/{self.journal.run_id()}"
            )
            self.privacy_metrics = PrivacyExporter(self.registry, job, self.server)
        self.hub = DeviceHub(self.identity, job.spec, self.server, self.inputs.model.layout(), self.metrics, settings)
        self.end: RunEnd | None = None
        self.saw_every_device = True  # until `start` finds a checkpoint: rounds ran in a process before this one
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._http = HttpEndpoints(self.registry, ready=self._ready)
        self.grpc_port = 0
        self.http_port: int | None = None

    @property
    def records(self) -> list[RoundRecord]:
        return self.journal.records

    def _ready(self) -> bool:
        # Still ready once the job is done: during the farewell devices must reach this pod (through a Service
        # too, which sends traffic to ready pods only) to hear that the job ended. Not ready once it stops.
        return self.hub.serving and not self.hub.stopping

    async def start(self) -> None:
        """Restore state, then listen. Raises CheckpointError for a state dir of another job."""
        ckpt = self.journal.prepare(resume=True)  # a pod (re)started on its volume always continues
        if ckpt is not None:
            self.server.restore(ckpt)
            self.saw_every_device = False
            if self.server.done:
                log.info("%s is already complete after round %d: telling devices it is done", self.identity, ckpt.round)
            else:
                log.info("resuming %s after round %d", self.identity, ckpt.round)
        self.hub.restored()
        self.metrics.seed(self.job.spec.rounds, self.server.round, self.server.totals.to_json())
        if self.privacy_metrics is not None:
            self.privacy_metrics.update()  # a resumed job shows the ε it already spent
        service = AggregatorService(
            self.hub, TokenVerifier(self.security.token_key, self.identity), self.config.chunk_bytes
        )
        on_malformed = malformed_counter(lambda method: self.metrics.malformed.labels(method).inc())
        limits = message_limits(self.hub.layout, self.job.spec.cohort.invited)
        server, self.grpc_port = create_grpc_server(
            service, self._health, self.security, self.config.listen.host, self.config.listen.port, limits, on_malformed
        )
        await server.start()
        self._server = server
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.config.http is not None:
            self.http_port = await self._http.start(self.config.http.host, self.config.http.port)
        log.info("aggregator listening: gRPC %s:%d, HTTP %s", self.config.listen.host, self.grpc_port, self.http_port)

    @property
    def stop_reason(self) -> str | None:
        """Why a complete job ended before its last round (e.g. its privacy budget), or None."""
        return self.end.early_stop if self.end is not None else None

    async def run(self, on_round: RoundCallback | None = None) -> bool:
        """Run the job's rounds; True when the job is complete, which includes ending early on its privacy
        budget (see `stop_reason`); False when stopped before the end."""
        if self.server.done:
            self.end = RunEnd(EndKind.ROUNDS_COMPLETED, f"{self.job.spec.rounds} rounds finished", self.server.round)
        else:
            observers: list[RoundObserver] = [self._observe]
            if on_round is not None:
                observers.append(record_observer(on_round))
            evaluator = ServerEvaluator(self.inputs.model, self.inputs.test) if self.inputs.test is not None else None
            self.end = await serve_rounds(self.hub, self.journal, evaluator, observers)
        if not self.end.complete:
            return False
        self.hub.finish()  # a job already complete at start is told DONE too
        self.finish_outputs()
        return True

    def _observe(self, record: RoundRecord, result: RoundResult) -> None:
        self.metrics.round_finished(result, record.wall_seconds, self.server.totals.churn_rate)
        if record.accuracy is not None and record.loss is not None:
            self.metrics.model_accuracy.set(record.accuracy)
            self.metrics.model_loss.set(record.loss)
        if self.privacy_metrics is not None:
            self.privacy_metrics.update()

    def finish_outputs(self) -> None:
        assert self.end is not None
        self.inputs.model.save(self.paths.model, self.server.weights, self.server.round)
        self.journal.write_summary(self.job.metadata.name, self.server.totals.to_json(), self.end)

    def farewell(self) -> Farewell:
        return Farewell.for_job(
            self.job.spec,
            time_scale=self.config.time_scale,
            linger_seconds=self.config.linger_seconds,
            fleet_size=self.inputs.fleet_size,
            saw_every_device=self.saw_every_device,
        )

    async def linger(self) -> None:
        """After the end, keep answering DONE until every device that may still ask has heard it, or the
        farewell's window is over (see aggregator.farewell); also when this process started on a finished run."""
        farewell, hub = self.farewell(), self.hub
        started = hub.clock()
        while not hub.stopping and not farewell.over(
            elapsed=hub.clock() - started, told=hub.told_done, every_known_device_told=hub.all_told_done()
        ):
            await asyncio.sleep(FAREWELL_CHECK_SECONDS)
        log.info("told %d devices the job is done after %.1fs", hub.told_done, hub.clock() - started)

    def request_stop(self) -> None:
        log.info("shutting down")
        self.hub.request_stop()

    async def stop(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.hub.request_stop()
        await self._http.stop()
        if self._server is not None:
            await self._server.stop(SHUTDOWN_GRACE_SECONDS)
            self._server = None

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)


def final_outcome(app: AggregatorApp) -> JSON:
    """The status outcome of a complete job: all its rounds, or an early end on its privacy budget."""
    end = app.end
    assert end is not None and end.complete
    if end.kind == EndKind.PRIVACY_BUDGET_EXHAUSTED:
        return outcome_status(end.kind.value, f"after round {end.after_round}: {end.message}")
    return outcome_status(end.kind.value, end.message)


async def publish(app: AggregatorApp, gateway: GatewaySection) -> Publication:
    """Publish the job's final model to the fleet gateway (on a worker thread: it loads the model file and
    blocks on the network, retrying while the gateway is unreachable)."""
    server = app.server
    model = final_model(app.paths.model, app.identity, server.round, app.records, server.epsilon, app.paths.artifact)
    publication = await asyncio.to_thread(publish_final_model, gateway, model)
    if publication.error is not None:
        log.warning("the final model is not published: %s", publication.error)
    return publication


class BadInput(Exception):
    """What the aggregator was given can never work: its job, its configuration or its state dir. Found while
    it starts, before it serves anyone; `fedfleet aggregator` exits EXIT_BAD_INPUT with this one-line message
    (api/termination.py), and the operator fails the job with it instead of restarting the pod."""


async def start_app(job: FederatedJob, config: AggregatorConfig) -> AggregatorApp:
    """The aggregator, listening. Raises BadInput for input that can never work; anything else (a port in
    use, a full disk) propagates as it is: it may be gone when the pod restarts."""
    try:
        # Loads the data and plans the privacy noise: e.g. a targetEpsilon that no noise multiplier reaches.
        app = AggregatorApp(job, config, prepare_security(config, job))
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    try:
        await app.start()
    except (CheckpointError, ValueError) as exc:  # a checkpoint of another job, or one that cannot be read
        raise BadInput(str(exc)) from None
    return app


async def serve(job: FederatedJob, config: AggregatorConfig) -> int:
    """The `fedfleet aggregator` process: EXIT_COMPLETE when the job completed, EXIT_STOPPED when stopped before
    its end. Raises BadInput when it cannot start (see start_app)."""
    app = await start_app(job, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, app.request_stop)
    # In a cluster, progress also goes to the FederatedJob's status (see k8s_status); locally there is none.
    reporter = StatusReporter.from_environment()
    server = app.server
    on_round = (
        reporter.on_round(lambda: server.totals.churn_rate, lambda: server.epsilon) if reporter is not None else None
    )
    completed = False
    try:
        completed = await app.run(on_round)
        if completed:
            ended = final_outcome(app)
            if config.gateway is not None:
                ended = with_publication(ended, await publish(app, config.gateway))
            if reporter is not None:
                reporter.report(ended)
            await app.linger()
    finally:
        await app.stop()
        if reporter is not None:
            reporter.close()
    return EXIT_COMPLETE if completed else EXIT_STOPPED
