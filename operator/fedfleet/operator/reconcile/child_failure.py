"""What the API server said when the operator could not create, change, delete or read one of a job's children,
and what that means for the job.

k8s.py fills one in from the API's answer; `plan.refused` turns it into the job's status and a Warning Event,
so the user sees on the FederatedJob what only the operator's log used to say. Pure: no API calls here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedfleet.api.status import Reason

Action = Literal["create", "update", "delete", "read"]

_DOING: dict[Action, str] = {"create": "creating", "update": "updating", "delete": "deleting", "read": "reading"}
#: The API's answers that say the object itself is wrong (422 Invalid: a name no Service may have, a field out of
#: range; 400: a request it cannot parse): sending the same object again gets the same answer.
_NEVER = frozenset({400, 422})
#: Characters of the API's message kept: a webhook may answer at any length, and a status the schema refuses
#: (a condition's message is at most 32768) would leave the job saying nothing again.
MAX_MESSAGE = 2000


@dataclass(frozen=True)
class ChildFailure:
    action: Action
    kind: str
    name: str
    #: The API's HTTP status; None when no request failed: the name is taken by an object of another owner.
    status: int | None
    message: str  # the API's own message (or, for a taken name, what was found)

    @property
    def permanent(self) -> bool:
        """True when retrying can never help, so the job fails; False when it may work later (403 from
        PodSecurity, RBAC or a quota; 409; 429; 5xx, e.g. an admission webhook that is down; a taken name)."""
        return self.status in _NEVER

    @property
    def reason(self) -> Reason:
        if self.status is None:
            return Reason.CHILD_NAME_TAKEN
        if self.permanent:
            return Reason.CHILD_INVALID
        if self.status == 403:
            return Reason.CHILD_FORBIDDEN
        return Reason.CHILD_REQUEST_FAILED

    def describe(self) -> str:
        """One line for the condition and the Event: what the operator was doing, and the API's answer."""
        said = self.message if len(self.message) <= MAX_MESSAGE else self.message[: MAX_MESSAGE - 1] + "…"
        answer = said if self.status is None else f"the API server answered {self.status}: {said}"
        return f"{_DOING[self.action]} {self.kind} {self.name}: {answer}"
