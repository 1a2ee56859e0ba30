"""Aggregation strategies, one module per rule as in Flower: the interfaces (base: AggregationRule and
ServerOptimizer), FedAvg with its plain server step (fedavg), the robust rules (median, trimmed_mean, krum,
norm_bounding), the server optimizers (fedavgm; fedadam, fedyogi and fedadagrad over fedopt), and
factory.build_strategy, which picks the pair a job's spec names.

Floor: strategies, below privacy and the engine, which use it; above only the bottom floor (api, models,
persist, data). The math is numpy; no torch or gRPC.
"""
