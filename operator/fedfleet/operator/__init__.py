"""The FederatedJob operator: kopf handlers (thin) over pure builders and a pure reconcile step.

Layout: `resources/` builds child objects as plain dicts, `reconcile/` turns a job, its observed children
and the time into the objects to create, the pod to delete, a status patch and Events; `k8s.py` is the only
module that talks to the Kubernetes API; `handlers.py` wires those into kopf. Importing this package must
stay cheap and free of kopf: the aggregator pod's init step (`certinit`) runs from it too.

Floor: production, beside aggregator/ and device/, which it never imports; it never imports torch or gRPC
either (a forbidden contract), so the operator image stays small.
"""
