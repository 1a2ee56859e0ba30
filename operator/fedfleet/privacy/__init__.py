"""Privacy of a job's updates: secure aggregation (secagg/), differential privacy (dp/), how an update is
encoded for secure aggregation (secure_update), the job's privacy plan and errors, the per-device ε ledger
and its metrics.

Floor: privacy, below the engine and the wire protocol (which carries secagg's messages), above strategies
(central DP wraps an aggregation rule) and the bottom floor. Pure: no torch, gRPC, kopf or Kubernetes.
"""
