"""The aggregator reports a job's progress by patching its FederatedJob's status.

The operator runs the aggregator with a ServiceAccount that may only get and patch `federatedjobs/status` of
its own job (`resourceNames`), and names the job in the pod's environment (fedfleet.api.pod_environment). The
reporter sends JSON merge patches of the fields the aggregator owns (see fedfleet.api.status) over HTTPS with
the pod's token and the cluster CA — the standard library only: this package must not import a Kubernetes client.

Reports never block the round loop: `report()` hands the latest progress to a background thread, which
sends the newest one (older unsent ones are superseded) and retries with backoff while the API server is
unreachable. `close()` flushes the last report before the process exits.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from fedfleet.api import pod_environment
from fedfleet.api.federatedjob import API_GROUP, API_VERSION
from fedfleet.api.manifest import describe_validation_error
from fedfleet.api.pod_environment import JobEnvironment
from fedfleet.api.status import JobOutcome

log = logging.getLogger("fedfleet.aggregator.status")

REQUEST_TIMEOUT = 10.0
BACKOFF_START, BACKOFF_MAX = 0.5, 15.0

JSON = dict[str, Any]
Sender = Callable[[JSON], None]


class RoundFacts(Protocol):
    """What the status needs of a finished round (the round records have it). A protocol rather than the
    record type: the aggregator sits below the embedded runtime that defines the records."""

    @property
    def round(self) -> int: ...
    @property
    def participants(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def accuracy(self) -> float | None: ...


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def round_status(
    record: RoundFacts, churn: float | None = None, epsilon_spent: float | None = None, at: str | None = None
) -> JSON:
    """The status fields after a finished round (pure). Accuracy is kept from earlier rounds when this round
    had no server evaluation: a merge patch leaves absent fields alone."""
    status: JSON = {
        "round": record.round,
        "participants": record.participants,
        "dropped": record.dropped,
        "lastRoundTime": at or _now(),
    }
    accuracy = _finite(record.accuracy)
    if accuracy is not None:
        status["accuracy"] = min(max(accuracy, 0.0), 1.0)
    churn = _finite(churn)
    if churn is not None:
        status["churn"] = min(max(churn, 0.0), 1.0)
    epsilon = _finite(epsilon_spent)
    if epsilon is not None:
        status["epsilonSpent"] = max(epsilon, 0.0)
    return status


def outcome_status(reason: str, message: str = "") -> JSON:
    """The status field that tells the operator the job is over (e.g. RoundsCompleted, PrivacyBudgetExhausted).

    Built through the status model the operator reads it with, so a reason the CRD would refuse (not
    CamelCase) fails here, naming the field, instead of as a rejected patch in the background reporter."""
    try:
        outcome = JobOutcome(reason=reason, message=message)
    except ValidationError as exc:
        raise ValueError(f"status.outcome.{describe_validation_error(exc)}") from None
    return {"outcome": outcome.model_dump(mode="json", by_alias=True)}


@dataclass(frozen=True)
class ClusterTarget:
    server: str
    ca_file: Path
    token_file: Path
    namespace: str
    name: str

    @property
    def status_url(self) -> str:
        return (
            f"{self.server}/apis/{API_GROUP}/{API_VERSION}/namespaces/{self.namespace}/federatedjobs/{self.name}/status"
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ClusterTarget | None:
        """The job's status endpoint when running in a cluster pod made by the operator; None otherwise."""
        server, job = pod_environment.in_cluster_server(environ), JobEnvironment.from_environ(environ)
        if server is None or job is None:
            return None
        sa = pod_environment.service_account_dir(environ)
        return cls(server, sa / "ca.crt", sa / "token", job.namespace, job.name)

    def send(self, status: JSON) -> None:
        """One merge patch; raises urllib.error.URLError / OSError on failure."""
        token = self.token_file.read_text(encoding="ascii").strip()  # re-read: projected tokens rotate
        request = urllib.request.Request(
            self.status_url,
            data=json.dumps({"status": status}).encode(),
            method="PATCH",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
            },
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, context=context, timeout=REQUEST_TIMEOUT) as response:
            response.read()


class StatusReporter:
    """Sends status patches from a background thread; the newest pending patch wins."""

    def __init__(self, send: Sender, describe: str = "job status") -> None:
        self._send = send
        self._describe = describe
        self._pending: JSON | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._idle = True
        self.sent = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="status-reporter", daemon=True)
        self._thread.start()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> StatusReporter | None:
        target = ClusterTarget.from_environment(environ)
        if target is None:
            return None
        return cls(target.send, f"federatedjobs/{target.namespace}/{target.name}/status")

    def report(self, status: JSON) -> None:
        with self._cond:
            # Merge into what is still unsent, so an outcome is never superseded by a later round's fields.
            self._pending = {**(self._pending or {}), **status}
            self._cond.notify()

    def on_round(
        self, churn: Callable[[], float | None], epsilon: Callable[[], float | None]
    ) -> Callable[[RoundFacts], None]:
        """A round callback for the coordinator: reports each finished round."""

        def callback(record: RoundFacts) -> None:
            self.report(round_status(record, churn(), epsilon()))

        return callback

    def close(self, timeout: float = 10.0) -> bool:
        """Flush what is pending (waiting up to `timeout` seconds) and stop; True when everything was sent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            self._cond.wait_for(lambda: self._pending is None and self._idle, timeout)
            flushed = self._pending is None and self._idle
        self._thread.join(timeout=0.1)
        return flushed

    def _run(self) -> None:
        delay = BACKOFF_START
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closing)
                if self._pending is None:
                    return
                patch, self._pending, self._idle = self._pending, None, False
            try:
                self._send(patch)
            except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
                self.failures += 1
                detail = exc.read().decode(errors="replace")[:300] if isinstance(exc, urllib.error.HTTPError) else ""
                log.warning("reporting %s failed: %s %s", self._describe, exc, detail)
                with self._cond:
                    self._pending = {**patch, **(self._pending or {})}
                    self._idle = True
                    self._cond.notify_all()
                    if self._closing and isinstance(exc, urllib.error.HTTPError) and exc.code in (401, 403, 404):
                        self._pending = None  # never going to work: do not hold up the exit
                        self._cond.notify_all()
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_START
            self.sent += 1
            with self._cond:
                self._idle = True
                self._cond.notify_all()
