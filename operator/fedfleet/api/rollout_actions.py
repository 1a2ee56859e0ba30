"""Users' actions on a ModelRollout (promote, abort, …), as the kubectl plugin writes them and the operator
reads them.

An action is an annotation, never a change to `spec`: the spec is what Git holds, and a GitOps tool would
undo (or report as drift) any edit made beside it. The annotation's value is `<action>/<id>` with a fresh
id per request, and the operator records the last id it carried out in `status.handledAction`, so an action
runs exactly once however often the object is reconciled, and the same action can be asked for again.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import StrEnum

ACTION_ANNOTATION = "fedfleet.io/rollout-action"
_VALUE = re.compile(r"^(?P<action>[A-Za-z]+)/(?P<id>[A-Za-z0-9-]{1,64})$")


class Action(StrEnum):
    PROMOTE = "promote"  # skip the current pause or inconclusive analysis: go to the next step
    PROMOTE_FULL = "promoteFull"  # skip every remaining step: the candidate goes to 100 %
    ABORT = "abort"  # weight 0, every device back on the stable version
    PAUSE = "pause"  # stop stepping (a failing background analysis still aborts)
    RESUME = "resume"  # undo pause
    RETRY = "retry"  # after an abort: the same revision again from step 0


@dataclass(frozen=True)
class ActionRequest:
    action: Action
    request_id: str

    def annotation_value(self) -> str:
        return f"{self.action}/{self.request_id}"


class ActionError(ValueError):
    pass


def new_request(action: Action) -> ActionRequest:
    return ActionRequest(action, uuid.uuid4().hex)


def parse_request(value: str) -> ActionRequest:
    """The request an annotation value holds; a clear error naming the annotation when it is not one."""
    match = _VALUE.match(value.strip())
    known = ", ".join(action.value for action in Action)
    if match is None:
        raise ActionError(f"annotation {ACTION_ANNOTATION}: {value[:80]!r} is not '<action>/<id>' (actions: {known})")
    try:
        action = Action(match.group("action"))
    except ValueError:
        raise ActionError(
            f"annotation {ACTION_ANNOTATION}: unknown action {match.group('action')!r} (actions: {known})"
        ) from None
    return ActionRequest(action, match.group("id"))
