"""Exceptions of secure aggregation, each saying what happens next."""

from __future__ import annotations

from .messages import Stage


class SecAggError(Exception):
    """Base class of every secure-aggregation error."""


class SecAggAborted(SecAggError):
    """The round cannot produce a correct sum any more; nothing about any input was revealed.

    Raised by the server when too few clients remain at some stage, and by a client when the server's
    messages break the protocol (a client then refuses to go on rather than risk revealing its input).
    """

    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(f"secure aggregation aborted at stage {stage.name}: {reason}")
        self.stage = stage
        self.reason = reason


class ClientRejected(SecAggError):
    """A client's message was refused; the round itself carries on.

    ``dropped``: the message was malformed and the client may send nothing more this round (its input is
    then left out of the sum, except at stage UNMASK, where only its shares are ignored). Otherwise the
    message was merely stale, early, late or a conflicting duplicate and changed nothing. The server raises
    it from ``receive_*`` so that the transport can answer with an error status (INVALID_ARGUMENT when
    dropped, FAILED_PRECONDITION otherwise).
    """

    def __init__(self, client_id: int, stage: Stage, reason: str, *, dropped: bool) -> None:
        outcome = "dropped from the round" if dropped else "message ignored"
        super().__init__(f"client {client_id} at stage {stage.name}: {reason} ({outcome})")
        self.client_id = client_id
        self.stage = stage
        self.reason = reason
        self.dropped = dropped


class ProtocolStateError(SecAggError):
    """A state machine method was called out of order: a bug in the caller, not bad input."""
