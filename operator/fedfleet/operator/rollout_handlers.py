"""kopf handlers for ModelRollout: thin, every one of them ends in `RolloutController.reconcile`.

A rollout is reconciled when it is created or changed (spec or labels: kopf's diff base leaves annotations
out, see `handlers.diffbase_storage`), when the operator (re)starts, and every `rollout_seconds` by a daemon:
steps with durations and analysis intervals move on that tick, and so does an action annotation `kubectl
fedfleet` writes. Its state is all in its status, so the trigger carries nothing and a
restarted operator continues at the same step. Deleting a rollout takes its entry out of the fleet's view:
its devices go back to the fleet's stable version.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import kopf

from fedfleet.api.federatedjob import API_GROUP, API_VERSION
from fedfleet.operator.gateway_http import GatewayArtifacts
from fedfleet.operator.k8s import ROLLOUT_PLURAL, ApiError, RolloutApi
from fedfleet.operator.rollout_controller import RolloutController, RolloutSettings
from fedfleet.operator.rollout_metrics import RolloutMetrics

log = logging.getLogger("fedfleet.operator.rollout")
RETRY_DELAY = 5.0
CANCELLATION_TIMEOUT = 30.0


def build_controller(memo: kopf.Memo) -> RolloutController:
    """Made by the operator's startup handler, beside the job API, on its client and registry."""
    from fedfleet.operator.handlers import _state

    state = _state(memo)
    settings = RolloutSettings(state.config.fleet_namespace, state.config.prometheus_address)
    address = state.config.gateway_http_address
    lookup = GatewayArtifacts(address) if address else None
    metrics = RolloutMetrics(state.metrics.registry)
    return RolloutController(RolloutApi(state.api.client), settings, metrics, artifact_lookup=lookup)


def _controller(memo: kopf.Memo) -> RolloutController:
    """The operator's one controller: every rollout's handlers share it (and its metrics)."""
    from fedfleet.operator.handlers import _state

    state = _state(memo)
    if state.rollouts is None:
        state.rollouts = build_controller(memo)
    controller: RolloutController = state.rollouts
    return controller


_locks: dict[tuple[str, str], asyncio.Lock] = {}


async def reconcile_rollout(memo: kopf.Memo, namespace: str, name: str) -> None:
    async with _locks.setdefault((namespace, name), asyncio.Lock()):
        try:
            await _controller(memo).reconcile(namespace, name)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise kopf.TemporaryError(f"rollout {namespace}/{name}: {exc}", delay=RETRY_DELAY) from exc
        except ApiError as exc:
            # 409: the fleet's view or the status changed under us; read again soon.
            raise kopf.TemporaryError(f"rollout {namespace}/{name}: {exc}", delay=RETRY_DELAY) from exc


@kopf.on.resume(API_GROUP, API_VERSION, ROLLOUT_PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, ROLLOUT_PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, ROLLOUT_PLURAL)
async def rollout_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    await reconcile_rollout(memo, namespace or "default", name)


@kopf.daemon(API_GROUP, API_VERSION, ROLLOUT_PLURAL, cancellation_timeout=CANCELLATION_TIMEOUT, backoff=RETRY_DELAY)
async def rollout_tick(
    namespace: str | None, name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Reconciles the rollout every `rollout_seconds` while it exists (a daemon: a timer's interval is fixed at
    import, before the settings are known)."""
    from fedfleet.operator.handlers import _state

    delay = _state(memo).config.rollout_seconds
    while not await stopped.wait(delay):
        try:
            await reconcile_rollout(memo, namespace or "default", name)
        except kopf.TemporaryError as exc:
            log.info("%s (the next tick retries)", exc)


@kopf.on.delete(API_GROUP, API_VERSION, ROLLOUT_PLURAL, optional=True)
async def rollout_deleted(namespace: str | None, name: str, spec: Any, memo: kopf.Memo, **_: Any) -> None:
    fleet = str((spec or {}).get("fleet", "default"))
    try:
        await _controller(memo).forget(namespace or "default", name, fleet)
    except (aiohttp.ClientError, TimeoutError, ApiError) as exc:
        raise kopf.TemporaryError(f"rollout {namespace}/{name}: {exc}", delay=RETRY_DELAY) from exc
    _locks.pop((namespace or "default", name), None)
