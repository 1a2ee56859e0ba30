"""Protocol buffers of the aggregator service (fedfleet.v1), with their generated Python code committed."""
