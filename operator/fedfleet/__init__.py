"""fedfleet: Kubernetes-native federated learning for edge fleets.

One subpackage per role, on floors where imports only go down (the `layers` contract of import-linter in
pyproject.toml; the README's Layout). Packages on one floor joined by `|` never import each other; those
joined by `:` may:

    cli                                  the `fedfleet` command
    runtime                              the embedded runtime behind `fedfleet run`
    sim                                  the simulated fleet
    aggregator | device | operator       the aggregator service, the device SDK, the kopf operator
    engine                               the round loop and round engine
    proto | security                     the wire protocol; TLS and device tokens
    privacy                              secure aggregation, differential privacy, the ε ledger
    strategies                           aggregation rules and server optimizers
    api : models : persist : data        spec models, parameters and torch models, checkpoints, datasets
"""

__version__ = "0.1.0"
