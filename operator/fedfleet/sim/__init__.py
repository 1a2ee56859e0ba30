"""The simulated fleet: devices with data partitions, heterogeneous speed, availability windows and dropouts,
Byzantine attacks, and the fleet that talks to a real aggregator over gRPC (`fedfleet device-sim`); and the
simulated fleet of model rollouts (rollout_fleet), which reaches a fleet gateway over gRPC or in process
(gateway_link).

Floor: sim, above the production floor (aggregator/, device/, operator/), which never imports it; below
runtime/ and the cli. Only sim/ and runtime/ know that a fleet is simulated.
"""
