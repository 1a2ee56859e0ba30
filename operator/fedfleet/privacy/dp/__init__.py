"""Differential privacy for federated rounds: accounting, central DP-FedAvg, distributed Skellam noise.

- :mod:`.accountant` — ε of the sampled Gaussian mechanism composed over rounds, with Google's
  `dp-accounting` (never hand-written formulas); calibration of the noise multiplier; the per-job accountant.
- :mod:`.central` — DP-FedAvg on the server: clip, sum, Gaussian noise, fixed denominator; adaptive clipping.
- :mod:`.distributed` — each device's share of integer (Skellam) noise for use under secure aggregation.

On privacy/'s floor.
"""
