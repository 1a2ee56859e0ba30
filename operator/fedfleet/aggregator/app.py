"""Wiring of one aggregator process: TLS and token key, the gRPC server (the Aggregator service, standard
health checking and reflection), the HTTP endpoints, the round loop, signals and shutdown."""

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

from fedfleet.api.aggregator_config import AggregatorConfig
from fedfleet.api.federatedjob import FederatedJob
from fedfleet.proto import codec
from fedfleet.proto.v1 import aggregator_pb2 as pb
from fedfleet.proto.v1 import aggregator_pb2_grpc as pb_grpc
from fedfleet.runtime.records import RoundRecord, RunPaths
from fedfleet.runtime.report import summarize, write_summary
from fedfleet.runtime.task import SimulatedTask, build_task, save_model
from fedfleet.security import tokens
from fedfleet.security.certs import TlsFiles, write_tls_files
from fedfleet.security.tokens import TokenVerifier, new_key, read_key, write_key

from .coordinator import Coordinator, CoordinatorSettings, RoundCallback
from .endpoints import HttpEndpoints
from .evaluation import ServerEvaluator, model_layout
from .k8s_status import JSON, StatusReporter, outcome_status
from .metrics import AggregatorMetrics
from .privacy import PrivacyExporter, build_job_privacy, ledger_path, uses_privacy
from .service import AggregatorService

log = logging.getLogger("fedfleet.aggregator")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Aggregator"].full_name
#: How long in-flight calls may finish once shutdown starts.
SHUTDOWN_GRACE_SECONDS = 2.0


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
    service: AggregatorService, health_servicer: health.aio.HealthServicer, security: Security, host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """The TLS gRPC server with the Aggregator service, health checking and reflection; returns it and its port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", codec.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", codec.MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second aggregator on the same port must fail, not share it
        ]
    )
    pb_grpc.add_AggregatorServicer_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    credentials = grpc.ssl_server_credentials([(security.key_pem, security.cert_pem)])
    bound = server.add_secure_port(f"{host}:{port}", credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return server, bound


class AggregatorApp:
    def __init__(
        self,
        job: FederatedJob,
        config: AggregatorConfig,
        security: Security,
        *,
        task: SimulatedTask | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.job = job
        self.config = config
        self.security = security
        self.task = task or build_task(job.spec)
        self.registry = registry or CollectorRegistry()
        self.metrics = AggregatorMetrics(self.registry)
        self.paths = RunPaths(config.state_dir)
        settings = CoordinatorSettings(
            time_scale=config.time_scale,
            min_devices=config.min_devices,
            settle_seconds=config.settle_seconds,
            poll_seconds=config.poll_seconds,
            device_ttl_seconds=config.device_ttl_seconds,
            max_update_bytes=config.max_update_bytes,
        )
        identity = job_identity(job)
        privacy = (
            build_job_privacy(job, identity, self.paths, ledger_path(config.ledger_path, config.state_dir))
            if uses_privacy(job)
            else None
        )
        self.coordinator = Coordinator(
            identity,
            job.spec,
            self.task.initial_weights(),
            model_layout(self.task),
            self.paths,
            self.metrics,
            settings,
            evaluator=ServerEvaluator(self.task),
            privacy=privacy,
        )
        self.privacy_metrics = (
            PrivacyExporter(self.registry, job, self.coordinator.server) if privacy is not None else None
        )
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._http = HttpEndpoints(self.registry, ready=self._ready)
        self.grpc_port = 0
        self.http_port: int | None = None

    def _ready(self) -> bool:
        return self.coordinator.serving and not self.coordinator.stopping and not self.coordinator.done

    async def start(self) -> None:
        """Restore state, then listen. Raises CheckpointError for a state dir of another job."""
        resumed = self.coordinator.restore()
        if resumed:
            log.info("resuming %s after round %d", self.coordinator.job_name, resumed)
        if self.privacy_metrics is not None:
            self.privacy_metrics.update()  # a resumed job shows the ε it already spent
        service = AggregatorService(
            self.coordinator, TokenVerifier(self.security.token_key, self.coordinator.job_name), self.config.chunk_bytes
        )
        server, self.grpc_port = create_grpc_server(
            service, self._health, self.security, self.config.listen.host, self.config.listen.port
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
        return self.coordinator.stop_reason

    async def run(self, on_round: RoundCallback | None = None) -> bool:
        """Run the job's rounds; True when the job is complete, which includes ending early on its privacy
        budget (see `stop_reason`); False when stopped before the end."""
        await self.coordinator.run(self._with_privacy_metrics(on_round))
        if not self.coordinator.done:
            return False
        self.finish_outputs()
        return True

    def _with_privacy_metrics(self, on_round: RoundCallback | None) -> RoundCallback | None:
        exporter = self.privacy_metrics
        if exporter is None:
            return on_round

        def callback(record: RoundRecord) -> None:
            exporter.update()
            if on_round is not None:
                on_round(record)

        return callback

    def finish_outputs(self) -> None:
        coordinator = self.coordinator
        save_model(self.paths.model, self.task, coordinator.server.weights, coordinator.server.round)
        totals = coordinator.server.totals.to_json()
        summary = summarize(coordinator.records, self.job.metadata.name, totals, coordinator.stop_reason)
        write_summary(self.paths.summary, summary)

    async def linger(self) -> None:
        """After the end, keep answering DONE until every connected device heard it (or the time is up)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.config.linger_seconds
        while loop.time() < end and not self.coordinator.stopping and not self.coordinator.all_told_done():
            await asyncio.sleep(0.05)

    def request_stop(self) -> None:
        log.info("shutting down")
        self.coordinator.request_stop()

    async def stop(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.coordinator.request_stop()
        await self._http.stop()
        if self._server is not None:
            await self._server.stop(SHUTDOWN_GRACE_SECONDS)
            self._server = None

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)


def final_outcome(app: AggregatorApp) -> JSON:
    """The status outcome of a complete job: all its rounds, or an early end on its privacy budget."""
    reason = app.stop_reason
    if reason is not None:
        message = reason.removeprefix("PrivacyBudgetExhausted: ")
        return outcome_status("PrivacyBudgetExhausted", f"after round {app.coordinator.server.round}: {message}")
    return outcome_status("RoundsCompleted", f"{app.job.spec.rounds} rounds finished")


async def serve(job: FederatedJob, config: AggregatorConfig) -> int:
    """The `fedfleet aggregator` process: 0 when the job completed, 3 when stopped before its end."""
    app = AggregatorApp(job, config, prepare_security(config, job))
    await app.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, app.request_stop)
    # In a cluster, progress also goes to the FederatedJob's status (see k8s_status); locally there is none.
    reporter = StatusReporter.from_environment()
    server = app.coordinator.server
    on_round = (
        reporter.on_round(lambda: server.totals.churn_rate, lambda: server.epsilon) if reporter is not None else None
    )
    completed = False
    try:
        completed = await app.run(on_round)
        if completed and reporter is not None:
            reporter.report(final_outcome(app))
        if completed:
            await app.linger()
    finally:
        await app.stop()
        if reporter is not None:
            reporter.close()
    return 0 if completed else 3
