"""Running a job on one machine: the embedded runtime behind `fedfleet run` (the whole job in one process,
the simulated fleet included), its per-round records, progress display and end-of-run report.

Floor: runtime, below only the cli; it may use every floor beneath it, the simulator included, and nothing
below imports it.
"""
