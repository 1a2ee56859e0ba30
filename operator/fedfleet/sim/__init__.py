"""The simulated fleet: devices with data partitions, heterogeneous speed, availability windows and dropouts,
Byzantine attacks, and the fleet that talks to a real aggregator over gRPC (`fedfleet device-sim`).

Floor: sim, above the production floor (aggregator/, device/, operator/), which never imports it; below
runtime/ and the cli. Only sim/ and runtime/ know that a fleet is simulated.
"""
