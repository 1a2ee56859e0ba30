"""Running a job on one machine, `fedfleet run`: the in-process transport of the round loop (inprocess,
local), the aggregator on loopback with the simulated fleet over gRPC (loopback), one entry for both
(job_run), the progress display and the end-of-run report.

Floor: runtime, below only the cli; it may use every floor beneath it, the simulator included, and nothing
below imports it.
"""
