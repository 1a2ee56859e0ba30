"""How the devices of a simulated rollout fleet reach the fleet gateway: one factory per transport, each giving a
device a fresh link every time it comes online (what `RolloutFleet` asks for).

`grpc_links` is what a fleet beside a real gateway uses (`fedfleet device-sim` style, the e2e tests): TLS to the
gateway's address and a fleet token per device, issued with the gateway's token key as `fedfleet token issue
--fleet` would. `in_process_links` is the embedded runtime's: calls straight into a `Gateway` object.
"""

from __future__ import annotations

from fedfleet.device.fleet_grpc import GrpcFleetLink
from fedfleet.gateway.core import Gateway
from fedfleet.security.tokens import fleet_identity, issue_token
from fedfleet.sim.gateway_link import GatewayLink
from fedfleet.sim.rollout_devices import APP_VERSION, SimulatedDevice
from fedfleet.sim.rollout_fleet import LinkFactory


def grpc_links(
    target: str,
    *,
    fleet: str,
    token_key: bytes,
    ca_pem: bytes,
    token_ttl_seconds: float = 86_400.0,
    call_seconds: float = 10.0,
) -> LinkFactory:
    """Links over gRPC to the gateway at `target` (host:port), each device with its own token and connection."""
    audience = fleet_identity(fleet)

    def link_for(device: SimulatedDevice) -> GrpcFleetLink:
        token = issue_token(token_key, audience, device.device_id, token_ttl_seconds)
        return GrpcFleetLink(
            target,
            token=token,
            root_certificates=ca_pem,
            app_version=device.attributes.get(APP_VERSION, ""),
            call_seconds=call_seconds,
        )

    return link_for


def in_process_links(gateway: Gateway, fleet: str) -> LinkFactory:
    """Links straight into `gateway`, as the devices of `fleet` whose tokens it would have verified."""

    def link_for(device: SimulatedDevice) -> GatewayLink:
        return GatewayLink(gateway, fleet, device.device_id, device.attributes.get(APP_VERSION, ""))

    return link_for
