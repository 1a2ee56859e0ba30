"""The aggregator service a FederatedJob's pod runs: the gRPC servicer of fedfleet.v1 (service: check-in,
tasks, chunked uploads, secure-aggregation stages, evaluation reports), the device hub those calls read and
change (hub, devices, campaigns, secure_round), the gRPC transport of the engine's round loop (transport),
what the process is told about its job (inputs: model, evaluation data, fleet size), HTTP metrics and
health, and status reports to the job's resource.

Floor: production, beside device/ and operator/, which it never imports. It uses the engine and the floors
below it, and never sim/ or runtime/ above: production code does not know that a fleet may be simulated.
"""
