"""The aggregator service a FederatedJob's pod runs: the gRPC servicer of fedfleet.v1 (check-in, tasks,
chunked uploads, secure-aggregation stages, evaluation reports), the round loop on the wall clock that drives
the engine, the device registry, HTTP metrics and health, and status reports to the job's resource.

Floor: production, beside device/ and operator/, which it never imports. It uses the engine and the floors
below it, and never sim/ or runtime/ above: production code does not know that a fleet may be simulated.
"""
