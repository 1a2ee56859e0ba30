"""Wiring of one gateway process: TLS and keys, the fleet states from the state dir, the artifact store, the
gRPC server (fedfleet.v1.Fleet and FleetAdmin, standard health checking, reflection), the HTTP endpoints,
the fleet views' ConfigMaps in a cluster (view_source.py), signals and shutdown.

One asyncio loop serves everything: a WatchAssignment stream is a coroutine waiting on its slot, not a thread,
so one process holds tens of thousands of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from fedfleet.gateway.artifact_info import ROUTE, artifact_info
from fedfleet.persist.artifact_store import ArtifactStore
from fedfleet.proto import guard
from fedfleet.proto.http_endpoints import HttpEndpoints
from fedfleet.proto.refusals import Refusal
from fedfleet.proto.v1 import gateway_pb2 as pb
from fedfleet.security.certs import TlsFiles, write_tls_files
from fedfleet.security.tokens import TokenVerifier, fleet_identity, new_key, read_key, write_key

from .config import GatewayConfig
from .core import Gateway
from .fleet_state import FleetStates
from .kube_configmaps import ConfigMapReader
from .metrics import GatewayMetrics
from .service import FleetAdminService, FleetService, malformed_in_stream, max_message_bytes, message_limits
from .view_source import ConfigMapViewSource, Fetch

log = logging.getLogger("fedfleet.gateway")

FLEET_SERVICE: str = pb.DESCRIPTOR.services_by_name["Fleet"].full_name
ADMIN_SERVICE: str = pb.DESCRIPTOR.services_by_name["FleetAdmin"].full_name
#: How long in-flight calls may finish once shutdown starts (open watches are ended at once).
SHUTDOWN_GRACE_SECONDS = 2.0
#: Largest answer: a download chunk, or a fleet summary.
MAX_SEND_BYTES = 4 << 20
#: HTTP/2 pings on idle connections find devices that vanished without closing their watch.
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
)


def pending_call_options(max_watch_streams: int) -> tuple[tuple[str, int], ...]:
    """How many calls the server may hold received but not yet handed to a handler. grpc's default (1000)
    cancels the rest, so a fleet reconnecting at once (after a gateway restart: thousands of WatchAssignment
    streams within a second) would see CANCELLED for a share of its devices; a burst as large as the stream
    cap queues instead."""
    pending = max(1000, max_watch_streams)
    return (("grpc.server.max_pending_requests", pending), ("grpc.server.max_pending_requests_hard_limit", 2 * pending))


@dataclass(frozen=True)
class GatewaySecurity:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    token_key: bytes
    admin_secret: str  # what FleetAdmin callers send as their bearer token: every call
    publish_secret: str | None = None  # the bearer token for PublishModel alone; None: there is none


def prepare_security(config: GatewayConfig) -> GatewaySecurity:
    """Read the TLS files and the keys, creating them first when the config allows it. Raises ValueError."""
    tls, auth = config.tls, config.auth
    files = TlsFiles(ca_cert=tls.ca, server_cert=tls.cert, server_key=tls.key)
    if tls.generate and not (files.server_cert.exists() and files.server_key.exists()):
        hosts = list(dict.fromkeys([config.listen.host, "localhost", "127.0.0.1", *tls.hosts]))
        write_tls_files(files, "fleet gateway", [h for h in hosts if h not in ("0.0.0.0", "::")])
    if auth.generate:
        for path in (auth.token_key, auth.admin_token, auth.publish_token):
            if path is not None and not path.exists():
                write_key(path, new_key())
    try:
        cert, key = files.server_cert.read_bytes(), files.server_key.read_bytes()
        ca = files.ca_cert.read_bytes() if files.ca_cert.exists() else b""
    except OSError as exc:
        raise ValueError(f"TLS: cannot read {exc.filename}: {exc.strerror}") from None
    token_key = _key("auth.tokenKey", auth.token_key)
    admin = _key("auth.adminToken", auth.admin_token).hex()
    publish = None if auth.publish_token is None else _key("auth.publishToken", auth.publish_token).hex()
    if publish is not None and hmac.compare_digest(publish, admin):
        # Two files with one secret: whoever holds the publish token could rewrite every fleet's view.
        raise ValueError(f"auth.publishToken: {auth.publish_token} holds the admin secret; it must hold its own")
    return GatewaySecurity(cert, key, ca, token_key, admin, publish)


def _key(field: str, path: Path) -> bytes:
    """A hex key file; ValueError naming the config field and the file."""
    try:
        return read_key(path)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


def token_verifier(key: bytes, fleets: list[str], remember: int = 0) -> TokenVerifier:
    """One verifier for the tokens of every served fleet, remembering up to `remember` verified tokens."""
    audiences = [fleet_identity(f) for f in fleets]
    return TokenVerifier(key, audiences[0], also=audiences[1:], remember=remember)


class GatewayApp:
    def __init__(
        self,
        config: GatewayConfig,
        security: GatewaySecurity,
        store: ArtifactStore,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        view_fetch: Fetch | None = None,
    ) -> None:
        """`view_fetch` reads the fleets' ConfigMaps when the config has a viewSource; by default the API
        server, as the pod's ServiceAccount."""
        self.config = config
        self.security = security
        self.registry = registry or CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        states = FleetStates(config.state_dir, config.fleets)
        self.gateway = Gateway(states, store, self.metrics, config.settings(), config.state_dir / "incoming", clock)
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._http = HttpEndpoints(
            self.registry,
            ready=lambda: self._server is not None,
            prefix_routes={ROUTE: lambda digest: artifact_info(store, digest)},
        )
        self.grpc_port = 0
        self.http_port: int | None = None
        self.view_source: ConfigMapViewSource | None = None
        if config.view_source is not None:
            fetch = view_fetch or ConfigMapReader.in_cluster(config.view_source.namespace).get
            self.view_source = ConfigMapViewSource(
                self.gateway, config.fleets, fetch, config.view_source.interval_seconds
            )
        self._view_stop = asyncio.Event()
        self._view_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Restore each fleet's view, read the views' ConfigMaps once, then listen. Raises FleetStateError for
        a state file it cannot use."""
        self.gateway.states.load()
        self.gateway.restored()
        if self.view_source is not None:
            # Once before serving, so that a restarted gateway answers its first devices from the current view.
            await self.view_source.poll()
        server, self.grpc_port = self._create_server()
        await server.start()
        self._server = server
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.config.http is not None:
            self.http_port = await self._http.start(self.config.http.host, self.config.http.port)
        if self.view_source is not None:
            self._view_task = asyncio.create_task(self.view_source.run(self._view_stop), name="view-source")
        log.info("gateway listening: gRPC %s:%d, HTTP %s", self.config.listen.host, self.grpc_port, self.http_port)

    def _create_server(self) -> tuple[grpc.aio.Server, int]:
        limits = message_limits(self.gateway)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes(limits)),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                ("grpc.so_reuseport", 0),  # a second gateway on the same port must fail, not share it
                *KEEPALIVE_OPTIONS,
                *pending_call_options(self.gateway.settings.max_watch_streams),
            ]
        )
        metrics = self.metrics
        on_malformed = guard.MalformedCounter(
            lambda method: metrics.refused(method, Refusal.MALFORMED_MESSAGE), logger=log
        )
        # As many verified tokens as devices the gateway remembers for its gauges (~0.5 KB each, only for
        # devices that called): each device's later calls skip the MAC and parsing work.
        remember = self.gateway.settings.max_tracked_devices
        verifier = token_verifier(self.security.token_key, self.config.fleets, remember)
        fleet = FleetService(self.gateway, verifier)
        admin = FleetAdminService(self.gateway, self.security.admin_secret, self.security.publish_secret)
        for servicer, name in ((fleet, "Fleet"), (admin, "FleetAdmin")):
            guard.add_guarded_servicer(servicer, server, name, pb, on_malformed, limits, malformed_in_stream)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [FLEET_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        credentials = grpc.ssl_server_credentials([(self.security.key_pem, self.security.cert_pem)])
        host, port = self.config.listen.host, self.config.listen.port
        bound = server.add_secure_port(f"{host}:{port}", credentials)
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        return server, bound

    async def stop(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._view_task is not None:
            self._view_stop.set()
            await self._view_task  # ends within one fetch's timeout
            self._view_task = None
        self.gateway.close()  # open watches end now: their devices reconnect to another replica
        await self._http.stop()
        if self._server is not None:
            await self._server.stop(SHUTDOWN_GRACE_SECONDS)
            self._server = None

    async def _set_health(self, status: int) -> None:
        for name in ("", FLEET_SERVICE, ADMIN_SERVICE):
            await self._health.set(name, status)


async def serve(config: GatewayConfig) -> int:
    """The `fedfleet gateway` process: serves until SIGTERM or SIGINT; 0 after a clean shutdown."""
    store = ArtifactStore(config.artifact_dir, config.limits.max_artifact_bytes)
    app = GatewayApp(config, prepare_security(config), store)
    await app.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
        log.info("shutting down")
    finally:
        await app.stop()
    return 0
