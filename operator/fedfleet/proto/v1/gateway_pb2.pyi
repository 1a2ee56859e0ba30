from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FleetCheckInRequest(_message.Message):
    __slots__ = ("attributes", "current_version", "app_version")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.ScalarMap[str, str]
    current_version: str
    app_version: str
    def __init__(self, attributes: _Optional[_Mapping[str, str]] = ..., current_version: _Optional[str] = ..., app_version: _Optional[str] = ...) -> None: ...

class FleetCheckInResponse(_message.Message):
    __slots__ = ("assignment", "check_in_interval_seconds")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    CHECK_IN_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    assignment: ModelAssignment
    check_in_interval_seconds: float
    def __init__(self, assignment: _Optional[_Union[ModelAssignment, _Mapping]] = ..., check_in_interval_seconds: _Optional[float] = ...) -> None: ...

class GetAssignmentRequest(_message.Message):
    __slots__ = ("attributes",)
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class WatchAssignmentRequest(_message.Message):
    __slots__ = ("attributes",)
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SignedRelease(_message.Message):
    __slots__ = ("record", "signature", "key_id")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    signature: bytes
    key_id: str
    def __init__(self, record: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class ModelAssignment(_message.Message):
    __slots__ = ("version", "role", "rollout", "revision", "release", "size", "generation")
    class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ROLE_UNSPECIFIED: _ClassVar[ModelAssignment.Role]
        STABLE: _ClassVar[ModelAssignment.Role]
        CANARY: _ClassVar[ModelAssignment.Role]
        CONTROL: _ClassVar[ModelAssignment.Role]
        OUTSIDE: _ClassVar[ModelAssignment.Role]
    ROLE_UNSPECIFIED: ModelAssignment.Role
    STABLE: ModelAssignment.Role
    CANARY: ModelAssignment.Role
    CONTROL: ModelAssignment.Role
    OUTSIDE: ModelAssignment.Role
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    version: str
    role: ModelAssignment.Role
    rollout: str
    revision: int
    release: SignedRelease
    size: int
    generation: int
    def __init__(self, version: _Optional[str] = ..., role: _Optional[_Union[ModelAssignment.Role, str]] = ..., rollout: _Optional[str] = ..., revision: _Optional[int] = ..., release: _Optional[_Union[SignedRelease, _Mapping]] = ..., size: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class WatchKeepalive(_message.Message):
    __slots__ = ("next_within_seconds",)
    NEXT_WITHIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    next_within_seconds: float
    def __init__(self, next_within_seconds: _Optional[float] = ...) -> None: ...

class AssignmentEvent(_message.Message):
    __slots__ = ("assignment", "keepalive")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    assignment: ModelAssignment
    keepalive: WatchKeepalive
    def __init__(self, assignment: _Optional[_Union[ModelAssignment, _Mapping]] = ..., keepalive: _Optional[_Union[WatchKeepalive, _Mapping]] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("digest", "offset")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...

class ModelHealthReport(_message.Message):
    __slots__ = ("version", "accuracy", "loss", "inference_latency_ms", "examples", "activation_failure", "attributes")
    class ActivationFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[ModelHealthReport.ActivationFailure]
        DIGEST_MISMATCH: _ClassVar[ModelHealthReport.ActivationFailure]
        SIZE_MISMATCH: _ClassVar[ModelHealthReport.ActivationFailure]
        UNTRUSTED_KEY: _ClassVar[ModelHealthReport.ActivationFailure]
        BAD_SIGNATURE: _ClassVar[ModelHealthReport.ActivationFailure]
        MALFORMED_ARTIFACT: _ClassVar[ModelHealthReport.ActivationFailure]
        ARCHITECTURE_MISMATCH: _ClassVar[ModelHealthReport.ActivationFailure]
        LOAD_ERROR: _ClassVar[ModelHealthReport.ActivationFailure]
    NONE: ModelHealthReport.ActivationFailure
    DIGEST_MISMATCH: ModelHealthReport.ActivationFailure
    SIZE_MISMATCH: ModelHealthReport.ActivationFailure
    UNTRUSTED_KEY: ModelHealthReport.ActivationFailure
    BAD_SIGNATURE: ModelHealthReport.ActivationFailure
    MALFORMED_ARTIFACT: ModelHealthReport.ActivationFailure
    ARCHITECTURE_MISMATCH: ModelHealthReport.ActivationFailure
    LOAD_ERROR: ModelHealthReport.ActivationFailure
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FAILURE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    version: str
    accuracy: float
    loss: float
    inference_latency_ms: float
    examples: int
    activation_failure: ModelHealthReport.ActivationFailure
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, version: _Optional[str] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., inference_latency_ms: _Optional[float] = ..., examples: _Optional[int] = ..., activation_failure: _Optional[_Union[ModelHealthReport.ActivationFailure, str]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelHealthAck(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class PublishModelHeader(_message.Message):
    __slots__ = ("digest", "size")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class PublishModelChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PublishModelHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PublishModelHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PublishModelResponse(_message.Message):
    __slots__ = ("digest", "size")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class PutFleetViewRequest(_message.Message):
    __slots__ = ("fleet", "view", "releases")
    class ReleasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SignedRelease
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SignedRelease, _Mapping]] = ...) -> None: ...
    FLEET_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    fleet: str
    view: bytes
    releases: _containers.MessageMap[str, SignedRelease]
    def __init__(self, fleet: _Optional[str] = ..., view: _Optional[bytes] = ..., releases: _Optional[_Mapping[str, SignedRelease]] = ...) -> None: ...

class PutFleetViewResponse(_message.Message):
    __slots__ = ("generation", "changed")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    generation: int
    changed: bool
    def __init__(self, generation: _Optional[int] = ..., changed: _Optional[bool] = ...) -> None: ...

class GetFleetSummaryRequest(_message.Message):
    __slots__ = ("fleet",)
    FLEET_FIELD_NUMBER: _ClassVar[int]
    fleet: str
    def __init__(self, fleet: _Optional[str] = ...) -> None: ...

class DeviceCount(_message.Message):
    __slots__ = ("version", "role", "devices")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    version: str
    role: ModelAssignment.Role
    devices: int
    def __init__(self, version: _Optional[str] = ..., role: _Optional[_Union[ModelAssignment.Role, str]] = ..., devices: _Optional[int] = ...) -> None: ...

class VersionHealth(_message.Message):
    __slots__ = ("version", "role", "reports", "reporting_devices", "activation_failures", "mean_accuracy", "mean_loss", "latency_p50_seconds", "latency_p99_seconds", "failures_by_reason")
    class FailuresByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    REPORTING_DEVICES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FAILURES_FIELD_NUMBER: _ClassVar[int]
    MEAN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOSS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    version: str
    role: ModelAssignment.Role
    reports: int
    reporting_devices: int
    activation_failures: int
    mean_accuracy: float
    mean_loss: float
    latency_p50_seconds: float
    latency_p99_seconds: float
    failures_by_reason: _containers.ScalarMap[str, int]
    def __init__(self, version: _Optional[str] = ..., role: _Optional[_Union[ModelAssignment.Role, str]] = ..., reports: _Optional[int] = ..., reporting_devices: _Optional[int] = ..., activation_failures: _Optional[int] = ..., mean_accuracy: _Optional[float] = ..., mean_loss: _Optional[float] = ..., latency_p50_seconds: _Optional[float] = ..., latency_p99_seconds: _Optional[float] = ..., failures_by_reason: _Optional[_Mapping[str, int]] = ...) -> None: ...

class FleetSummary(_message.Message):
    __slots__ = ("fleet", "generation", "devices", "health", "check_in_interval_seconds")
    FLEET_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CHECK_IN_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    fleet: str
    generation: int
    devices: _containers.RepeatedCompositeFieldContainer[DeviceCount]
    health: _containers.RepeatedCompositeFieldContainer[VersionHealth]
    check_in_interval_seconds: float
    def __init__(self, fleet: _Optional[str] = ..., generation: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[DeviceCount, _Mapping]]] = ..., health: _Optional[_Iterable[_Union[VersionHealth, _Mapping]]] = ..., check_in_interval_seconds: _Optional[float] = ...) -> None: ...
