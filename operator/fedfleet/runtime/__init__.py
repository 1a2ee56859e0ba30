"""Running a job: the embedded local runtime and what the aggregator shares with it."""
