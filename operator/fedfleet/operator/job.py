"""A FederatedJob as the operator sees it: identity from metadata, the spec parsed by the shared models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fedfleet.api.federatedjob import FederatedJobSpec, name_error
from fedfleet.api.manifest import describe_validation_error
from fedfleet.api.status import FederatedJobStatus
from fedfleet.security.tokens import job_identity


class InvalidSpec(ValueError):
    """The spec passed the API server's schema but not the models: it was stored before the CRD had the rule
    it breaks (every cross-field rule is also CEL now, api/rules.py). Permanent."""


@dataclass(frozen=True)
class JobRef:
    name: str
    namespace: str
    uid: str
    generation: int
    body: dict[str, Any]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> JobRef:
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"], int(meta.get("generation", 1)), body)

    @property
    def identity(self) -> str:
        """The job name device tokens are issued for (`namespace/name`)."""
        return job_identity(self.name, self.namespace)

    def spec(self) -> FederatedJobSpec:
        """The spec with the models' defaults; raises InvalidSpec with a one-line message naming the field."""
        try:
            return FederatedJobSpec.model_validate(self.body.get("spec") or {}, by_alias=True, by_name=False)
        except ValidationError as exc:
            raise InvalidSpec(f"spec.{describe_validation_error(exc)}") from None

    def name_problem(self) -> str | None:
        """Why no child can be named after this job (`metadata.name: rule`), or None. The CRD refuses such a
        name when the job is created; a job stored before it had the rule can still have one."""
        broken = name_error(self.name)
        return None if broken is None else f"{broken.field}: {broken.rule}"

    def status(self) -> FederatedJobStatus:
        """The current status; a status the models cannot read counts as empty (the operator rewrites it)."""
        try:
            return FederatedJobStatus.model_validate(self.body.get("status") or {})
        except ValidationError:
            return FederatedJobStatus()
