"""Protocol buffers of the aggregator service (fedfleet.v1), with their generated Python code committed, and
the codecs between them and fedfleet's own types (tensors, secure-aggregation messages).

Floor: beside security/ (which it never imports), below the engine and the services that speak the protocol,
above privacy (secagg_wire translates its messages) and the floors beneath.
"""
