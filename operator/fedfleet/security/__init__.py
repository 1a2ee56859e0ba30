"""Transport security of the aggregator (a per-job CA and server certificate, signed device tokens) and the
Ed25519 signatures on model releases (signing: keys and trust sets; releases: signing a release record and a
device's check of a download against it).

Floor: beside proto/ (which it never imports), below the services that use it and above privacy and the
floors beneath. `cryptography`, the standard library and the bottom floor only.
"""
