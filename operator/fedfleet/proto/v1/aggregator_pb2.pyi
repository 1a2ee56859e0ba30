from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Capabilities(_message.Message):
    __slots__ = ("train_examples", "holdout_examples", "platform")
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    train_examples: int
    holdout_examples: int
    platform: str
    def __init__(self, train_examples: _Optional[int] = ..., holdout_examples: _Optional[int] = ..., platform: _Optional[str] = ...) -> None: ...

class CheckInRequest(_message.Message):
    __slots__ = ("device_id", "consent", "capabilities", "availability")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    consent: bool
    capabilities: Capabilities
    availability: Availability
    def __init__(self, device_id: _Optional[str] = ..., consent: _Optional[bool] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., availability: _Optional[_Union[Availability, _Mapping]] = ...) -> None: ...

class Availability(_message.Message):
    __slots__ = ("available", "for_round")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    FOR_ROUND_FIELD_NUMBER: _ClassVar[int]
    available: bool
    for_round: int
    def __init__(self, available: _Optional[bool] = ..., for_round: _Optional[int] = ...) -> None: ...

class CheckInResponse(_message.Message):
    __slots__ = ("job", "next_round", "total_rounds", "job_done", "poll_seconds")
    JOB_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    JOB_DONE_FIELD_NUMBER: _ClassVar[int]
    POLL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job: str
    next_round: int
    total_rounds: int
    job_done: bool
    poll_seconds: float
    def __init__(self, job: _Optional[str] = ..., next_round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., job_done: _Optional[bool] = ..., poll_seconds: _Optional[float] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("availability", "wait_seconds")
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    availability: Availability
    wait_seconds: float
    def __init__(self, availability: _Optional[_Union[Availability, _Mapping]] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("local_epochs", "batch_size", "learning_rate", "proximal_mu")
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    local_epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float
    def __init__(self, local_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., proximal_mu: _Optional[float] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "round", "model_version", "training", "deadline_seconds", "next_round", "secure_aggregation")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Task.Kind]
        WAIT: _ClassVar[Task.Kind]
        TRAIN: _ClassVar[Task.Kind]
        EVALUATE: _ClassVar[Task.Kind]
        DONE: _ClassVar[Task.Kind]
    KIND_UNSPECIFIED: Task.Kind
    WAIT: Task.Kind
    TRAIN: Task.Kind
    EVALUATE: Task.Kind
    DONE: Task.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROUND_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    kind: Task.Kind
    round: int
    model_version: int
    training: TrainingConfig
    deadline_seconds: float
    next_round: int
    secure_aggregation: SecureAggregationTask
    def __init__(self, kind: _Optional[_Union[Task.Kind, str]] = ..., round: _Optional[int] = ..., model_version: _Optional[int] = ..., training: _Optional[_Union[TrainingConfig, _Mapping]] = ..., deadline_seconds: _Optional[float] = ..., next_round: _Optional[int] = ..., secure_aggregation: _Optional[_Union[SecureAggregationTask, _Mapping]] = ...) -> None: ...

class SecureAggregationTask(_message.Message):
    __slots__ = ("client_id", "session", "num_clients", "vector_length", "degree", "threshold", "min_survivors", "modulus_bits", "encoding", "key_stage_seconds")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    MODULUS_BITS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    KEY_STAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    session: bytes
    num_clients: int
    vector_length: int
    degree: int
    threshold: int
    min_survivors: int
    modulus_bits: int
    encoding: UpdateEncoding
    key_stage_seconds: float
    def __init__(self, client_id: _Optional[int] = ..., session: _Optional[bytes] = ..., num_clients: _Optional[int] = ..., vector_length: _Optional[int] = ..., degree: _Optional[int] = ..., threshold: _Optional[int] = ..., min_survivors: _Optional[int] = ..., modulus_bits: _Optional[int] = ..., encoding: _Optional[_Union[UpdateEncoding, _Mapping]] = ..., key_stage_seconds: _Optional[float] = ...) -> None: ...

class UpdateEncoding(_message.Message):
    __slots__ = ("clip_range", "quantization_bits", "max_clients", "l2_clip", "weight_cap", "noise_sigma_grid", "noise_shares")
    CLIP_RANGE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_BITS_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    L2_CLIP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_CAP_FIELD_NUMBER: _ClassVar[int]
    NOISE_SIGMA_GRID_FIELD_NUMBER: _ClassVar[int]
    NOISE_SHARES_FIELD_NUMBER: _ClassVar[int]
    clip_range: float
    quantization_bits: int
    max_clients: int
    l2_clip: float
    weight_cap: float
    noise_sigma_grid: float
    noise_shares: int
    def __init__(self, clip_range: _Optional[float] = ..., quantization_bits: _Optional[int] = ..., max_clients: _Optional[int] = ..., l2_clip: _Optional[float] = ..., weight_cap: _Optional[float] = ..., noise_sigma_grid: _Optional[float] = ..., noise_shares: _Optional[int] = ...) -> None: ...

class SecAggPublicKeys(_message.Message):
    __slots__ = ("encryption_key", "masking_key")
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASKING_KEY_FIELD_NUMBER: _ClassVar[int]
    encryption_key: bytes
    masking_key: bytes
    def __init__(self, encryption_key: _Optional[bytes] = ..., masking_key: _Optional[bytes] = ...) -> None: ...

class AdvertiseKeysRequest(_message.Message):
    __slots__ = ("round", "keys")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    round: int
    keys: SecAggPublicKeys
    def __init__(self, round: _Optional[int] = ..., keys: _Optional[_Union[SecAggPublicKeys, _Mapping]] = ...) -> None: ...

class NeighbourKeys(_message.Message):
    __slots__ = ("client_id", "keys")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    keys: SecAggPublicKeys
    def __init__(self, client_id: _Optional[int] = ..., keys: _Optional[_Union[SecAggPublicKeys, _Mapping]] = ...) -> None: ...

class KeyBroadcast(_message.Message):
    __slots__ = ("round", "neighbours")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    round: int
    neighbours: _containers.RepeatedCompositeFieldContainer[NeighbourKeys]
    def __init__(self, round: _Optional[int] = ..., neighbours: _Optional[_Iterable[_Union[NeighbourKeys, _Mapping]]] = ...) -> None: ...

class SealedShare(_message.Message):
    __slots__ = ("peer", "ciphertext")
    PEER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    peer: int
    ciphertext: bytes
    def __init__(self, peer: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("round", "self_mask_commitment", "shares")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    round: int
    self_mask_commitment: bytes
    shares: _containers.RepeatedCompositeFieldContainer[SealedShare]
    def __init__(self, round: _Optional[int] = ..., self_mask_commitment: _Optional[bytes] = ..., shares: _Optional[_Iterable[_Union[SealedShare, _Mapping]]] = ...) -> None: ...

class ShareBundle(_message.Message):
    __slots__ = ("round", "shares")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    round: int
    shares: _containers.RepeatedCompositeFieldContainer[SealedShare]
    def __init__(self, round: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[SealedShare, _Mapping]]] = ...) -> None: ...

class MaskedInputHeader(_message.Message):
    __slots__ = ("round", "total_bytes", "complaints")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPLAINTS_FIELD_NUMBER: _ClassVar[int]
    round: int
    total_bytes: int
    complaints: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, round: _Optional[int] = ..., total_bytes: _Optional[int] = ..., complaints: _Optional[_Iterable[int]] = ...) -> None: ...

class MaskedInputChunk(_message.Message):
    __slots__ = ("header", "data", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: MaskedInputHeader
    data: bytes
    trailer: UpdateTrailer
    def __init__(self, header: _Optional[_Union[MaskedInputHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., trailer: _Optional[_Union[UpdateTrailer, _Mapping]] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("round", "survivors", "dropped")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    round: int
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, round: _Optional[int] = ..., survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskResponse(_message.Message):
    __slots__ = ("round", "self_mask_shares", "masking_key_shares")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASKING_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    round: int
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    masking_key_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, round: _Optional[int] = ..., self_mask_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., masking_key_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

class UnmaskAck(_message.Message):
    __slots__ = ("next_round",)
    NEXT_ROUND_FIELD_NUMBER: _ClassVar[int]
    next_round: int
    def __init__(self, next_round: _Optional[int] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    def __init__(self, model_version: _Optional[int] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("model_version", "dtype", "layout", "total_bytes", "sha256")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    dtype: str
    layout: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    total_bytes: int
    sha256: bytes
    def __init__(self, model_version: _Optional[int] = ..., dtype: _Optional[str] = ..., layout: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("round", "model_version", "num_examples", "train_loss", "dtype", "layout", "total_bytes")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    round: int
    model_version: int
    num_examples: int
    train_loss: float
    dtype: str
    layout: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    total_bytes: int
    def __init__(self, round: _Optional[int] = ..., model_version: _Optional[int] = ..., num_examples: _Optional[int] = ..., train_loss: _Optional[float] = ..., dtype: _Optional[str] = ..., layout: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class UpdateTrailer(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    def __init__(self, sha256: _Optional[bytes] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("header", "data", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    data: bytes
    trailer: UpdateTrailer
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., trailer: _Optional[_Union[UpdateTrailer, _Mapping]] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("result", "round", "next_round")
    class Result(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESULT_UNSPECIFIED: _ClassVar[UploadResponse.Result]
        ACCEPTED: _ClassVar[UploadResponse.Result]
        LATE: _ClassVar[UploadResponse.Result]
    RESULT_UNSPECIFIED: UploadResponse.Result
    ACCEPTED: UploadResponse.Result
    LATE: UploadResponse.Result
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROUND_FIELD_NUMBER: _ClassVar[int]
    result: UploadResponse.Result
    round: int
    next_round: int
    def __init__(self, result: _Optional[_Union[UploadResponse.Result, str]] = ..., round: _Optional[int] = ..., next_round: _Optional[int] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("model_version", "num_examples", "loss", "accuracy")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    num_examples: int
    loss: float
    accuracy: float
    def __init__(self, model_version: _Optional[int] = ..., num_examples: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ...) -> None: ...

class ReportEvaluationResponse(_message.Message):
    __slots__ = ("accepted", "next_round")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROUND_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    next_round: int
    def __init__(self, accepted: _Optional[bool] = ..., next_round: _Optional[int] = ...) -> None: ...
