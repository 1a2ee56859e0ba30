"""fedfleet.v1: the device ↔ aggregator protocol (`aggregator.proto`) and the device ↔ fleet gateway protocol
(`gateway.proto`). The `*_pb2*` modules are generated: run `make proto`.

On proto/'s floor.
"""
