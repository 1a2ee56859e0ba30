"""The round engine, the same for every transport: the round loop (loop) that both the in-process runtime
and the gRPC aggregator run, choosing a round's cohort, one training round as a state machine, the server's
model and its optimizer step, the run journal (a round's checkpoint and record committed together, the
typed reason a run ended), and random streams derived from the job's seed. No torch, gRPC, kopf or
Kubernetes: it never learns how updates travel.

Floor: engine, below the services that drive it (aggregator/, device/, operator/) and above the wire
protocol, privacy, strategies and the bottom floor, which it uses.
"""
