"""Transport security of the aggregator: a per-job CA and server certificate, and signed device tokens.

Floor: beside proto/ (which it never imports), below the services that use it and above privacy and the
floors beneath. `cryptography` and the standard library only.
"""
