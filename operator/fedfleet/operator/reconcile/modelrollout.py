"""What the ModelRollout controller decides, as pure functions: where the candidate comes from, the cohort
salt, the release record to sign, and the fleet's view the gateway answers devices from.

The fleet's view is one ConfigMap per fleet (`fedfleet-fleet-<fleet>` in the gateway's namespace, see
`fleet_configmap`): `view.json` (a `rollout.assignment.FleetView`), `releases.json` (the signed release
record of every version the view names) and `trusted-keys` (the public keys the fleet's releases are signed
with). Several rollouts of one fleet share it, each owning its own entry; the controller writes it with
optimistic concurrency (resourceVersion), so two rollouts reconciled at once cannot lose each other's entry.

Only rollouts that are stepping (Progressing or Paused with a candidate) have an entry. An aborted rollout
leaves the view, which puts every device it held back on the fleet's stable version; a finished one leaves
it too, after making its version the fleet's stable one — so the view holds no history, only what devices
must run now.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedfleet.api.modelrollout import ModelRolloutSpec
from fedfleet.api.rollout_status import RolloutPhase
from fedfleet.models.artifact import ReleaseRecord, SignedRelease
from fedfleet.rollout.assignment import FleetView, RolloutView
from fedfleet.rollout.selector import DeviceSelector
from fedfleet.rollout.step_state import StepState

FLEET_CONFIGMAP_PREFIX = "fedfleet-fleet-"
VIEW_KEY, RELEASES_KEY, TRUSTED_KEYS_KEY = "view.json", "releases.json", "trusted-keys"
SIGNING_KEY_FILE = "signing-key.pem"
STEPPING = (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)

JSON = dict[str, Any]


def fleet_configmap_name(fleet: str) -> str:
    return f"{FLEET_CONFIGMAP_PREFIX}{fleet}"


def signing_secret_name(fleet: str) -> str:
    return f"{FLEET_CONFIGMAP_PREFIX}{fleet}-signing"


def view_entry_name(namespace: str, name: str) -> str:
    """A rollout's entry in its fleet's view: namespace and name, so two namespaces cannot collide."""
    return f"{namespace}.{name}"


@dataclass(frozen=True)
class Candidate:
    """A published model a rollout can ship: what the release record needs besides its digest."""

    digest: str
    size: int
    architecture: str


def candidate_from_job(job_status: Mapping[str, Any] | None) -> Candidate | None:
    """The model a FederatedJob published (`status.model`, written by its aggregator), or None while there is
    none: the job still trains, or failed to publish. A malformed entry counts as none (the aggregator writes
    it through a validated model, so it is not expected)."""
    model = (job_status or {}).get("model")
    if not isinstance(model, Mapping):
        return None
    digest, size, architecture = model.get("digest"), model.get("size"), model.get("architecture")
    if isinstance(digest, str) and isinstance(size, int) and size > 0 and isinstance(architecture, str):
        return Candidate(digest, size, architecture)
    return None


def salt_for(uid: str, revision: int) -> str:
    """Keys the cohort buckets of one revision. Derived, not random, so a restarted operator computes the same
    salt and no device changes cohort; a new revision (another model) draws a fresh cohort."""
    return hashlib.sha256(f"fedfleet-cohort\0{uid}\0{revision}".encode()).hexdigest()[:32]


def release_record(
    namespace: str, name: str, state: StepState, candidate: Candidate, key_id: str, now: str
) -> ReleaseRecord:
    assert state.candidate == candidate.digest
    return ReleaseRecord(
        rollout=view_entry_name(namespace, name),
        revision=state.revision,
        version=candidate.digest,
        digest=candidate.digest,
        size=candidate.size,
        architecture=candidate.architecture,
        key_id=key_id,
        issued_at=now,
    )


def rollout_view(
    namespace: str, name: str, spec: ModelRolloutSpec, state: StepState, fleet_stable: str | None
) -> RolloutView | None:
    """The rollout's entry in the fleet's view, or None when it holds no device (see the module docstring)."""
    if state.phase not in STEPPING or state.candidate is None or state.salt is None:
        return None
    selector = DeviceSelector.from_dict(
        spec.selector.model_dump(mode="json", by_alias=True, exclude_none=True), "spec.selector"
    )
    return RolloutView(
        name=view_entry_name(namespace, name),
        salt=state.salt,
        revision=state.revision,
        stable=state.stable or fleet_stable,
        candidate=state.candidate,
        weight=float(state.weight),
        selector=selector,
        control=spec.control_cohort,
    )


def merge_view(
    current: FleetView | None, fleet: str, entry_name: str, entry: RolloutView | None, new_stable: str | None
) -> FleetView:
    """The fleet's view with this rollout's entry replaced (or removed) and, when the rollout just finished,
    its version as the fleet's stable one. The generation goes up only when something changed."""
    rollouts = tuple(r for r in (current.rollouts if current else ()) if r.name != entry_name)
    if entry is not None:
        rollouts = (*rollouts, entry)
    stable = new_stable if new_stable is not None else (current.stable if current else None)
    generation = current.generation if current else 0
    candidate = FleetView(fleet=fleet, stable=stable, rollouts=rollouts, generation=generation)
    if current is not None and candidate.to_dict() == current.to_dict():
        return current
    return FleetView(fleet=fleet, stable=stable, rollouts=rollouts, generation=generation + 1)


def named_versions(view: FleetView) -> set[str]:
    versions = {view.stable} if view.stable else set()
    for rollout in view.rollouts:
        versions.update(v for v in (rollout.stable, rollout.candidate) if v)
    return versions


def merge_releases(current: Mapping[str, JSON], view: FleetView, new: SignedRelease | None) -> dict[str, JSON]:
    """The signed releases of exactly the versions the view names (a device must be able to verify whatever
    it is assigned), keeping each version's first signature: re-signing would change nothing for devices."""
    releases = dict(current)
    if new is not None and new.record.digest not in releases:
        releases[new.record.digest] = new.to_dict()
    named = named_versions(view)
    return {digest: releases[digest] for digest in sorted(named) if digest in releases}


def fleet_configmap(
    namespace: str,
    fleet: str,
    view: FleetView,
    releases: Mapping[str, JSON],
    trusted_keys: Sequence[str],
    resource_version: str | None,
) -> JSON:
    metadata: JSON = {
        "name": fleet_configmap_name(fleet),
        "namespace": namespace,
        "labels": {
            "app.kubernetes.io/name": "fedfleet",
            "app.kubernetes.io/component": "fleet",
            "fedfleet.io/fleet": fleet,
        },
    }
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version  # optimistic concurrency: a 409 means read again
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {
            VIEW_KEY: json.dumps(view.to_dict(), sort_keys=True),
            RELEASES_KEY: json.dumps(dict(releases), sort_keys=True),
            TRUSTED_KEYS_KEY: "".join(f"{key}\n" for key in trusted_keys),
        },
    }


def read_fleet_configmap(
    configmap: Mapping[str, Any] | None, fleet: str
) -> tuple[FleetView | None, dict[str, JSON], list[str]]:
    """What a fleet ConfigMap holds; a missing one is an empty fleet. A damaged one raises ValueError naming
    the key, and the controller stops rather than overwrite a view it cannot read."""
    if configmap is None:
        return None, {}, []
    data = configmap.get("data") or {}
    where = f"ConfigMap {fleet_configmap_name(fleet)}"
    try:
        view = FleetView.from_dict(json.loads(data[VIEW_KEY])) if VIEW_KEY in data else None
        releases = json.loads(data.get(RELEASES_KEY, "{}"))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None
    if not isinstance(releases, dict):
        raise ValueError(f"{where}: {RELEASES_KEY} must be a JSON object")
    keys = [line.strip() for line in str(data.get(TRUSTED_KEYS_KEY, "")).splitlines() if line.strip()]
    return view, releases, keys
