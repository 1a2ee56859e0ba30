"""Rolling a published model out to the fleet: cohort buckets, selectors, the step machine, analysis.

Pure logic: no gRPC, torch, kopf or Kubernetes. The operator drives it, the gateway answers from it.
"""
