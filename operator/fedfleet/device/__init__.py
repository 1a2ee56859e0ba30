"""What runs on a device: the SDK an edge device embeds (client.DeviceClient), the agent loop that checks
in, trains and uploads, local training and evaluation with torch, the device's half of secure aggregation,
and reconnect backoff; and between trainings, the model updater of rollouts (model_updates: follow the
assignment, download, verify, swap, report health) with its gRPC fleet link (fleet_grpc).

Floor: production, beside aggregator/ and operator/, which it never imports; it uses the wire protocol,
privacy and models below it, and never sim/ or runtime/ above.
"""
