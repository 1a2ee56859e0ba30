"""The pure reconcile step: a job, what exists of its children, and the time in; what to do out.

On the operator's floor; no Kubernetes API calls here (operator/k8s.py makes them).
"""

from __future__ import annotations

from fedfleet.operator.reconcile.child_failure import ChildFailure
from fedfleet.operator.reconcile.conditions import set_condition
from fedfleet.operator.reconcile.plan import EventSpec, Observed, Plan, reconcile, refused

__all__ = ["ChildFailure", "EventSpec", "Observed", "Plan", "reconcile", "refused", "set_condition"]
