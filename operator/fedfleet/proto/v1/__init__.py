"""fedfleet.v1: the device ↔ aggregator protocol. `aggregator_pb2*` are generated: run `make proto`.

On proto/'s floor.
"""
