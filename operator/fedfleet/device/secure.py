"""A device's part in one secure-aggregation round (a TRAIN task that carries `secure_aggregation`).

    session = SecureSession(client, task)     # the round's parameters, checked
    await session.exchange_keys()              # stages 0 and 1: advertise keys, send sealed shares
    ...train...
    await session.submit(delta, num_examples)  # stages 2 and 3: masked input, then unmasking

Keys are exchanged before training, so a device that drops out while training is an ordinary stage-2
dropout the protocol survives. The update is encoded (clipped, weighted, quantized and — with distributed DP —
noised with the device's own OS randomness) and masked on the device; only the masked vector leaves it.

A device never sends two masked inputs for one round number under different sessions: a server that reran
a round (after a crash, or pretending one) could otherwise subtract two sums over different subsets and
isolate one device's update. `SentRounds` remembers what this device sent, in memory: a device that must
keep the promise across restarts should persist it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from fedfleet.privacy.secagg import MaskedInput, SecAggAborted, SecAggClient, ShareBundle
from fedfleet.proto import secagg_wire as wire
from fedfleet.proto.refusals import LEFT_ROUND as LEFT_ROUND_REASONS  # leaving them is not the device's fault

from .client import AggregatorError, DeviceClient, Task

R = TypeVar("R")


class SecureRoundRefusedByDevice(Exception):
    """The device will not take part: the server's parameters or messages break the protocol."""


@dataclass
class SentRounds:
    """Round number → the session of the masked input this device sent for it."""

    sessions: dict[int, bytes] = field(default_factory=dict)

    def check(self, round_number: int, session: bytes) -> None:
        sent = self.sessions.get(round_number)
        if sent is not None and sent != session:
            raise SecureRoundRefusedByDevice(
                f"round {round_number} was already aggregated securely with this device's input under another "
                "session; a second masked input for it could reveal the update"
            )

    def record(self, round_number: int, session: bytes) -> None:
        self.sessions[round_number] = session


class SecureSession:
    def __init__(self, client: DeviceClient, task: Task, sent: SentRounds | None = None) -> None:
        if task.secure is None:
            raise ValueError("the task does not use secure aggregation")
        params = task.secure
        try:
            self.config, self.encoding = wire.task_from_proto(task.round, params)
            self.secagg = SecAggClient(self.config, params.client_id)
        except ValueError as exc:
            raise SecureRoundRefusedByDevice(
                f"round {task.round}: unusable secure-aggregation parameters: {exc}"
            ) from None
        self.client = client
        self.task = task
        self.sent = sent if sent is not None else SentRounds()
        self.sent.check(task.round, self.config.session)
        self.grace = max(params.key_stage_seconds, 1.0)  # the unmasking stage runs past the round's deadline
        self.bundle: ShareBundle | None = None
        self.crypto_seconds = 0.0  # CPU seconds of this device's own work: keys, shares, encoding, masking
        self.upload_bytes = 0  # serialized messages this device sent, masked input included
        self.download_bytes = 0  # serialized messages the server sent back to it

    async def exchange_keys(self) -> None:
        """Stages 0 and 1. Raises AggregatorError when the server leaves this device out of the round."""
        deadline = self.task.deadline
        keys = self._timed(self.secagg.advertise_keys)
        request = wire.public_keys_to_proto(keys)
        self.upload_bytes += request.ByteSize()
        broadcast_message = await self.client.advertise_keys(request, deadline)
        self.download_bytes += broadcast_message.ByteSize()
        broadcast = wire.broadcast_from_proto(broadcast_message)
        shares = self._protocol(lambda: self.secagg.share_keys(broadcast))
        share_request = wire.share_keys_to_proto(shares)
        self.upload_bytes += share_request.ByteSize()
        bundle = await self.client.share_keys(share_request, deadline)
        self.download_bytes += bundle.ByteSize()
        self.bundle = wire.bundle_from_proto(bundle)

    async def submit(self, delta: NDArray[np.floating], num_examples: int) -> int:
        """Stages 2 and 3; returns the next round the server announced."""
        return await self.send(await self.mask(delta, num_examples))

    async def mask(self, delta: NDArray[np.floating], num_examples: int) -> MaskedInput:
        """Encode and mask the update (the device's heavy work, in a worker thread)."""
        if self.bundle is None:
            raise RuntimeError("exchange_keys must succeed before the update can be masked")
        bundle = self.bundle
        return await asyncio.to_thread(
            self._protocol, lambda: self.secagg.masked_input(bundle, self.encoding.encode(delta, num_examples))
        )

    async def send(self, masked: MaskedInput) -> int:
        """Upload the masked input, then reveal the shares the server asks for (stages 2 and 3)."""
        self.sent.record(self.task.round, self.config.session)
        self.upload_bytes += len(masked.masked)
        request = await self.client.upload_masked_input(
            self.task.round, masked.masked, masked.complaints, self.task.deadline + self.grace
        )
        self.download_bytes += request.ByteSize()
        unmask = self._protocol(lambda: self.secagg.unmask(wire.unmask_request_from_proto(request)))
        response = wire.unmask_response_to_proto(unmask)
        self.upload_bytes += response.ByteSize()
        ack = await self.client.unmask(response, time.monotonic() + self.grace)
        return int(ack.next_round)

    def _timed(self, step: Callable[[], R]) -> R:
        # CPU time of the calling thread: what the step costs the device, not time spent waiting for a core.
        started = time.thread_time()
        try:
            return step()
        finally:
            self.crypto_seconds += time.thread_time() - started

    def _protocol(self, step: Callable[[], R]) -> R:
        """Run a protocol step; a server message that breaks the protocol ends this device's part."""
        try:
            return self._timed(step)
        except SecAggAborted as exc:
            raise SecureRoundRefusedByDevice(str(exc)) from None


def left_round(err: AggregatorError) -> bool:
    return err.reason in LEFT_ROUND_REASONS
