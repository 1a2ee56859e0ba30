"""A rollout's conditions, from its step state: what `kubectl wait`, Argo CD and Flux read as its health.

Argo Rollouts-style conditions say what the rollout is doing: `Progressing`, `Paused`, `Degraded` (aborted)
and `Healthy` (done; its version is the stable one), exactly one of them True. kstatus' conditions are for
Flux and other generic readers; kstatus itself (sigs.k8s.io/cli-utils) reads only Reconciling and Stalled:

    phase        Ready  Reconciling  Stalled   kstatus
    Pending      False  True         False     InProgress  (waiting for the model)
    Progressing  False  True         False     InProgress
    Paused       False  False        False     Current     (nothing to do until a person acts: a GitOps
                                                             apply that waits for health is not held up)
    Degraded     False  False        True      Failed      (aborted: a retry or a new model goes on)
    Healthy      True   False        False     Current

`kubectl wait --for=condition=Healthy` (or Ready) waits for the end of a rollout, `condition=Paused` for a
pause, and Argo CD's health check reads the four Argo-style conditions.

A condition that is True carries the rollout's reason and message; one that is False gives the phase as its
reason. Each carries the generation it was computed from, and its lastTransitionTime moves only when its
status does (metav1.Condition). Conditions another writer added are kept, listed last.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedfleet.api.rollout_status import RolloutConditionType, RolloutPhase
from fedfleet.api.status import Condition
from fedfleet.rollout.step_state import StepState
from fedfleet.rollout.timestamps import rfc3339

Kind = RolloutConditionType

#: Per phase, the conditions that are True; every other one of Kind is False.
_TRUE: dict[RolloutPhase, frozenset[Kind]] = {
    RolloutPhase.PENDING: frozenset({Kind.PROGRESSING, Kind.RECONCILING}),
    RolloutPhase.PROGRESSING: frozenset({Kind.PROGRESSING, Kind.RECONCILING}),
    RolloutPhase.PAUSED: frozenset({Kind.PAUSED}),
    RolloutPhase.DEGRADED: frozenset({Kind.DEGRADED, Kind.STALLED}),
    RolloutPhase.HEALTHY: frozenset({Kind.HEALTHY, Kind.READY}),
}


def conditions_for(
    state: StepState, generation: int, now: float, previous: Sequence[Condition] = ()
) -> list[Condition]:
    """The rollout's conditions for `state`, computed from metadata.generation `generation` at `now`."""
    true = _TRUE[state.phase]
    earlier = {condition.type: condition for condition in previous}
    conditions = []
    for kind in Kind:
        status = "True" if kind in true else "False"
        before = earlier.get(kind)
        since = before.last_transition_time if before is not None and before.status == status else rfc3339(now)
        conditions.append(
            Condition(
                type=kind,
                status=status,
                reason=(state.reason or state.phase.value) if status == "True" else state.phase.value,
                message=state.message if status == "True" else "",
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    others = [condition for condition in previous if condition.type not in set(Kind)]
    return conditions + others
