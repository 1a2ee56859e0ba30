"""One secure-aggregation round run in memory: the server and clients wired without a network.

This is the reference for the transport (the gRPC layer does the same with deadlines instead of loops)
and the harness of the protocol's tests and of benchmarks/bench_secagg.py: it can make clients go silent at
any stage and tamper with their uploads, and it measures time and bytes per party.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from .client import SecAggClient
from .config import SecAggConfig
from .errors import ClientRejected, SecAggAborted
from .messages import (
    KeyBroadcast,
    MaskedInput,
    PublicKeys,
    ShareBundle,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from .ring import U64Vector
from .server import SecAggResult, SecAggServer

Upload = PublicKeys | ShareKeys | MaskedInput | UnmaskResponse
Tamper = Callable[[Stage, int, Upload], Upload]


@dataclass
class RoundStats:
    """Where the time and bytes of one round went. Bytes are payload bytes (see :func:`payload_bytes`)."""

    server_seconds: float = 0.0
    client_seconds: dict[int, float] = field(default_factory=dict)
    upload_bytes: dict[int, int] = field(default_factory=dict)
    download_bytes: dict[int, int] = field(default_factory=dict)
    rejected: list[ClientRejected] = field(default_factory=list)
    client_aborts: list[SecAggAborted] = field(default_factory=list)


def payload_bytes(message: object) -> int:
    """Bytes of a message's fields: byte strings by length, integers as 4 bytes (a protobuf encoding adds
    a tag and a length per field, a few bytes each)."""
    if isinstance(message, bytes):
        return len(message)
    if isinstance(message, int):
        return 4
    if isinstance(message, tuple):
        return sum(payload_bytes(item) for item in message)
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        return sum(payload_bytes(getattr(message, f.name)) for f in dataclasses.fields(message))
    raise TypeError(f"not a secure-aggregation message: {type(message).__name__}")


def run_round(
    config: SecAggConfig,
    inputs: Mapping[int, U64Vector],
    *,
    silent_from: Mapping[int, Stage] | None = None,
    tamper: Tamper | None = None,
    stats: RoundStats | None = None,
) -> SecAggResult:
    """Run all four stages and return the server's result (or raise :class:`SecAggAborted`).

    ``inputs`` maps each participating cohort slot to its quantized vector; slots without an input never
    show up. ``silent_from[u] = s`` makes client u send nothing from stage s on (a dropout before its
    stage-s upload). ``tamper(stage, u, message)`` may replace any upload (a faulty or malicious client)
    with another message of the same type. ``stats``, if given, is filled with time and bytes per party.
    """
    run = _InMemoryRound(
        config,
        inputs,
        silent_from or {},
        tamper,
        stats if stats is not None else RoundStats(),
        stats is not None,
    )
    return run.run()


M = TypeVar("M", PublicKeys, ShareKeys, MaskedInput, UnmaskResponse)
D = TypeVar("D")


class _InMemoryRound:
    def __init__(
        self,
        config: SecAggConfig,
        inputs: Mapping[int, U64Vector],
        silent_from: Mapping[int, Stage],
        tamper: Tamper | None,
        stats: RoundStats,
        count_bytes: bool,
    ) -> None:
        self.inputs = inputs
        self.silent_from = silent_from
        self.tamper = tamper
        self.stats = stats
        self.count_bytes = count_bytes  # sizing every message is not free: only when asked for
        self.server = SecAggServer(config)
        self.clients = {u: SecAggClient(config, u) for u in sorted(inputs)}

    def run(self) -> SecAggResult:
        server = self.server
        for u in sorted(self.clients):
            self._upload(u, Stage.ADVERTISE_KEYS, SecAggClient.advertise_keys, server.receive_public_keys)
        broadcasts = self._close(server.close_advertise_keys)
        for u, broadcast in broadcasts.items():
            self._upload(u, Stage.SHARE_KEYS, partial(_share_keys, broadcast), server.receive_share_keys)
        bundles = self._close(server.close_share_keys)
        for u, bundle in bundles.items():
            make = partial(_masked_input, bundle, self.inputs[u])
            self._upload(u, Stage.MASKED_INPUT, make, server.receive_masked_input)
        requests = self._close(server.close_masked_input)
        for u, request in requests.items():
            self._upload(u, Stage.UNMASK, partial(_unmask, request), server.receive_unmask)
        start = time.perf_counter()
        try:
            return server.finalize()
        finally:
            self.stats.server_seconds += time.perf_counter() - start

    def _upload(
        self, u: int, stage: Stage, make: Callable[[SecAggClient], M], receive: Callable[[int, M], None]
    ) -> None:
        """Client u builds its stage message (unless silent) and the server receives it."""
        client = self.clients.get(u)
        if client is None or self.silent_from.get(u, Stage.UNMASK + 1) <= stage:
            return
        stats = self.stats
        start = time.perf_counter()
        try:
            message = make(client)
        except SecAggAborted as exc:
            stats.client_aborts.append(exc)
            del self.clients[u]
            return
        finally:
            stats.client_seconds[u] = stats.client_seconds.get(u, 0.0) + time.perf_counter() - start
        if self.tamper is not None:
            tampered = self.tamper(stage, u, message)
            if type(tampered) is not type(message):
                raise TypeError(f"tamper must return a {type(message).__name__}, got {type(tampered).__name__}")
            message = tampered
        if self.count_bytes:
            stats.upload_bytes[u] = stats.upload_bytes.get(u, 0) + payload_bytes(message)
        start = time.perf_counter()
        try:
            receive(u, message)
        except ClientRejected as exc:
            stats.rejected.append(exc)
        finally:
            stats.server_seconds += time.perf_counter() - start

    def _close(self, close: Callable[[], dict[int, D]]) -> dict[int, D]:
        start = time.perf_counter()
        try:
            downloads = close()
        finally:
            self.stats.server_seconds += time.perf_counter() - start
        for u, message in downloads.items() if self.count_bytes else ():
            self.stats.download_bytes[u] = self.stats.download_bytes.get(u, 0) + payload_bytes(message)
        return downloads


def _share_keys(broadcast: KeyBroadcast, client: SecAggClient) -> ShareKeys:
    return client.share_keys(broadcast)


def _masked_input(bundle: ShareBundle, vector: U64Vector, client: SecAggClient) -> MaskedInput:
    return client.masked_input(bundle, vector)


def _unmask(request: UnmaskRequest, client: SecAggClient) -> UnmaskResponse:
    return client.unmask(request)
