"""Transport security of the aggregator: a per-job CA and server certificate, and signed device tokens."""
