"""Where a gateway in a cluster gets each fleet's view: the ConfigMap `fedfleet-fleet-<fleet>` the operator
writes in the gateway's namespace.

    data:
      view.json:     json.dumps(FleetView.to_dict())                        (fedfleet.rollout.assignment)
      releases.json: {digest: SignedRelease.to_dict(), ...}                 (fedfleet.models.artifact)

The source polls each served fleet's ConfigMap through the API server (`kube_configmaps.ConfigMapReader`)
and hands a changed one to `Gateway.put_fleet_view` — the same door the admin API uses, so every rule of a
view (its fleet, a generation that never goes back, an artifact and a signed release for each version it
names) is checked in one place. A ConfigMap is tried again only when its resourceVersion changes, except
when it names an artifact not published here yet: the publisher may be on its way, so that one is retried
on every poll.

While the API server cannot be reached the gateway keeps serving the last view it holds (persisted in its
state dir, so a restart mid-outage serves it too); one warning per outage, one line when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from fedfleet.models.artifact import ArtifactError, SignedRelease
from fedfleet.proto.refusals import Refusal

from .core import Gateway
from .errors import GatewayError
from .kube_configmaps import ApiUnreachable
from .releases import SignedParts

log = logging.getLogger("fedfleet.gateway.view_source")

CONFIGMAP_PREFIX = "fedfleet-fleet-"
VIEW_KEY = "view.json"
RELEASES_KEY = "releases.json"
#: Seconds between polls of every fleet's ConfigMap (the configuration's default).
DEFAULT_INTERVAL_SECONDS = 1.0
#: The method label refusals of views from ConfigMaps are counted under: the same as the admin API's.
METHOD = "PutFleetView"

#: GET of one ConfigMap by name: the object, None when it does not exist; raises ApiUnreachable.
Fetch = Callable[[str], "dict[str, Any] | None"]


def configmap_name(fleet: str) -> str:
    return f"{CONFIGMAP_PREFIX}{fleet}"


class ViewSourceError(ValueError):
    """A ConfigMap that is not a fleet view; the message names the key and the rule."""


@dataclass(frozen=True)
class ConfigMapView:
    resource_version: str
    view_json: bytes
    releases: dict[str, SignedParts]


def parse_configmap(obj: Mapping[str, Any], max_releases: int) -> ConfigMapView:
    """The view and releases a ConfigMap carries. Raises ViewSourceError naming what is wrong."""
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    if not isinstance(version, str) or not version:
        raise ViewSourceError("metadata.resourceVersion: missing")
    data = obj.get("data")
    if not isinstance(data, Mapping):
        raise ViewSourceError(f"data: must hold {VIEW_KEY} and {RELEASES_KEY}")
    view, releases = data.get(VIEW_KEY), data.get(RELEASES_KEY, "{}")
    if not isinstance(view, str) or not view:
        raise ViewSourceError(f"data.{VIEW_KEY}: missing")
    if not isinstance(releases, str):
        raise ViewSourceError(f"data.{RELEASES_KEY}: must be a JSON object of signed releases by digest")
    try:
        parsed = json.loads(releases)
    except (ValueError, RecursionError):
        raise ViewSourceError(f"data.{RELEASES_KEY}: not JSON") from None
    if not isinstance(parsed, dict):
        raise ViewSourceError(f"data.{RELEASES_KEY}: must be a JSON object of signed releases by digest")
    if len(parsed) > max_releases:
        raise ViewSourceError(f"data.{RELEASES_KEY}: at most {max_releases} releases, got {len(parsed)}")
    return ConfigMapView(version, view.encode("utf-8"), {str(k)[:80]: _parts(k, v) for k, v in parsed.items()})


def _parts(digest: str, release: object) -> SignedParts:
    try:
        signed = SignedRelease.from_dict(release)
    except ArtifactError as exc:
        raise ViewSourceError(f"data.{RELEASES_KEY}[{digest[:80]}]: {exc}") from None
    record = signed.record
    return SignedParts(record=record.canonical_bytes(), signature=signed.signature, key_id=record.key_id)


class ConfigMapViewSource:
    """Feeds the gateway the views of `fleets` from their ConfigMaps."""

    def __init__(
        self,
        gateway: Gateway,
        fleets: Collection[str],
        fetch: Fetch,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        self._gateway = gateway
        self._fleets = sorted(fleets)
        self._fetch = fetch
        self._interval = interval_seconds
        self._done: dict[str, str] = {}  # fleet -> resourceVersion that needs no other attempt
        self._said: dict[str, tuple[str, str]] = {}  # fleet -> (resourceVersion, problem) already logged
        self._absent: set[str] = set()  # fleets whose ConfigMap did not exist at the last poll (logged)
        self.outage: str | None = None  # the error of the outage in progress; None while the API answers
        self.applied = 0  # views that changed what the gateway serves

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set."""
        failed: str | None = None
        while not stop.is_set():
            try:
                await self.poll()
                failed = None
            except Exception as exc:  # e.g. the state dir is full: keep serving, keep trying, say it once
                if repr(exc) != failed:
                    log.exception("fleet views: a poll failed; serving the views held")
                failed = repr(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)

    async def poll(self) -> None:
        """One round over every fleet: fetch on a worker thread (the call blocks), apply on the event loop."""
        for fleet in self._fleets:
            try:
                obj = await asyncio.to_thread(self._fetch, configmap_name(fleet))
            except ApiUnreachable as exc:
                self._unreachable(str(exc))
                return  # the next fleet would only fail the same way
            self._reachable()
            self.offer(fleet, obj)

    def offer(self, fleet: str, obj: Mapping[str, Any] | None) -> None:
        """Apply the ConfigMap fetched for `fleet` (None: it does not exist) unless it was handled already."""
        if obj is None:
            if fleet not in self._absent:
                self._absent.add(fleet)
                log.info("fleet %s: no ConfigMap %s yet; serving the view held", fleet, configmap_name(fleet))
            return
        self._absent.discard(fleet)
        version = _resource_version(obj)
        if version is not None and self._done.get(fleet) == version:
            return
        try:
            parsed = parse_configmap(obj, self._gateway.settings.max_releases)
        except ViewSourceError as exc:
            self._gateway.metrics.refused(METHOD, Refusal.BAD_FLEET_VIEW)
            self._finish(fleet, version, f"ConfigMap {configmap_name(fleet)}: {exc}")
            return
        try:
            generation, changed = self._gateway.put_fleet_view(fleet, parsed.view_json, parsed.releases)
        except GatewayError as err:
            problem = f"ConfigMap {configmap_name(fleet)}: {err.message}"
            if err.reason == Refusal.ARTIFACT_MISSING:
                self._say(fleet, parsed.resource_version, problem + " (trying again until it is)")
            else:
                self._finish(fleet, parsed.resource_version, problem)
            return
        self._done[fleet] = parsed.resource_version
        self._said.pop(fleet, None)
        if changed:
            self.applied += 1
            log.info("fleet %s: serving view generation %d (ConfigMap %s)", fleet, generation, parsed.resource_version)

    def _finish(self, fleet: str, version: str | None, problem: str) -> None:
        """A refusal that only a new version of the ConfigMap can change."""
        if version is not None:
            self._done[fleet] = version
        self._say(fleet, version or "", problem)

    def _say(self, fleet: str, version: str, problem: str) -> None:
        if self._said.get(fleet) != (version, problem):
            self._said[fleet] = (version, problem)
            log.warning("fleet %s: the view is not applied; still serving the one held: %s", fleet, problem)

    def _unreachable(self, error: str) -> None:
        if self.outage is None:
            log.warning("the API server cannot be reached; serving the views held until it can: %s", error)
        self.outage = error

    def _reachable(self) -> None:
        if self.outage is not None:
            log.info("the API server answers again")
        self.outage = None


def _resource_version(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) and version else None
