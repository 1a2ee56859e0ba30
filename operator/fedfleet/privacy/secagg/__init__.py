"""Secure aggregation (Bonawitz et al. 2017) over the sparse neighbour graph of SecAgg+ (Bell et al. 2020).

The server learns the sum of the surviving clients' quantized inputs modulo 2^k and nothing else about
any input, as long as it follows the protocol (honest-but-curious) and fewer than ``threshold`` of any
client's neighbours collude with it. Malformed messages drop their sender; the round aborts cleanly when
too few clients remain to remove the masks.

Typical use: :class:`Quantizer` turns float updates into ring vectors, :class:`SecAggClient` and
:class:`SecAggServer` run the four stages (the transport carries their messages), and
``Quantizer.dequantize_sum`` turns ``SecAggResult.total`` back into the float sum.

On privacy/'s floor; wire translation of its messages lives above, in fedfleet.proto.secagg_wire.
"""

from .client import SecAggClient
from .config import SecAggConfig
from .errors import ClientRejected, ProtocolStateError, SecAggAborted, SecAggError
from .masking import expand_mask
from .messages import (
    EncryptedShare,
    KeyBroadcast,
    MaskedInput,
    NeighbourKeys,
    PublicKeys,
    RevealedShare,
    ShareBundle,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from .protocol import RoundStats, run_round
from .quantize import Quantizer
from .server import Exclusion, ExclusionReason, SecAggResult, SecAggServer

__all__ = [
    "ClientRejected",
    "EncryptedShare",
    "Exclusion",
    "ExclusionReason",
    "KeyBroadcast",
    "MaskedInput",
    "NeighbourKeys",
    "ProtocolStateError",
    "PublicKeys",
    "Quantizer",
    "RevealedShare",
    "RoundStats",
    "SecAggAborted",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggResult",
    "SecAggServer",
    "ShareBundle",
    "ShareKeys",
    "Stage",
    "UnmaskRequest",
    "UnmaskResponse",
    "expand_mask",
    "run_round",
]
