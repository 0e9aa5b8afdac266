from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_ADVERTISE_KEYS: _ClassVar[Phase]
    PHASE_SHARE_KEYS: _ClassVar[Phase]
    PHASE_MASKED_INPUT: _ClassVar[Phase]
    PHASE_CONSISTENCY_CHECK: _ClassVar[Phase]
    PHASE_UNMASKING: _ClassVar[Phase]
    PHASE_COMMITTED: _ClassVar[Phase]
    PHASE_ABORTED: _ClassVar[Phase]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_COMMITTED: _ClassVar[Outcome]
    OUTCOME_ABORTED: _ClassVar[Outcome]
PHASE_UNSPECIFIED: Phase
PHASE_ADVERTISE_KEYS: Phase
PHASE_SHARE_KEYS: Phase
PHASE_MASKED_INPUT: Phase
PHASE_CONSISTENCY_CHECK: Phase
PHASE_UNMASKING: Phase
PHASE_COMMITTED: Phase
PHASE_ABORTED: Phase
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_COMMITTED: Outcome
OUTCOME_ABORTED: Outcome

class EnrollRequest(_message.Message):
    __slots__ = ("token", "identity_key", "csr_der", "signature", "label")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    token: str
    identity_key: bytes
    csr_der: bytes
    signature: bytes
    label: str
    def __init__(self, token: _Optional[str] = ..., identity_key: _Optional[bytes] = ..., csr_der: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., label: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("client_id", "certificate_pem", "ca_certificate_pem")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    certificate_pem: bytes
    ca_certificate_pem: bytes
    def __init__(self, client_id: _Optional[int] = ..., certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ...) -> None: ...

class CheckInRequest(_message.Message):
    __slots__ = ("task", "agent_version", "wait_seconds")
    TASK_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    task: str
    agent_version: str
    wait_seconds: int
    def __init__(self, task: _Optional[str] = ..., agent_version: _Optional[str] = ..., wait_seconds: _Optional[int] = ...) -> None: ...

class CheckInResponse(_message.Message):
    __slots__ = ("assignment", "retry_after_seconds")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    assignment: RoundAssignment
    retry_after_seconds: int
    def __init__(self, assignment: _Optional[_Union[RoundAssignment, _Mapping]] = ..., retry_after_seconds: _Optional[int] = ...) -> None: ...

class RoundAssignment(_message.Message):
    __slots__ = ("round_id", "secagg_id", "phase")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SECAGG_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    secagg_id: int
    phase: Phase
    def __init__(self, round_id: _Optional[str] = ..., secagg_id: _Optional[int] = ..., phase: _Optional[_Union[Phase, str]] = ...) -> None: ...

class RoundRef(_message.Message):
    __slots__ = ("round_id", "phase")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("lr", "beta1", "beta2", "eps", "weight_decay", "alpha", "clip_norm")
    LR_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    alpha: float
    clip_norm: float
    def __init__(self, lr: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., eps: _Optional[float] = ..., weight_decay: _Optional[float] = ..., alpha: _Optional[float] = ..., clip_norm: _Optional[float] = ...) -> None: ...

class PhaseDeadline(_message.Message):
    __slots__ = ("phase", "unix_ms")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    phase: Phase
    unix_ms: int
    def __init__(self, phase: _Optional[_Union[Phase, str]] = ..., unix_ms: _Optional[int] = ...) -> None: ...

class RoundConfig(_message.Message):
    __slots__ = ("round_id", "round_number", "model_version", "task", "algorithm", "layout_fingerprint", "block_mode", "model", "global_update", "second_moment", "hyper", "local_steps", "global_step", "batch_size", "secagg_session_json", "secagg_id", "chunk_elements", "total_chunks", "deadlines", "quantization_json", "secure_aggregation", "phase")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_MODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_UPDATE_FIELD_NUMBER: _ClassVar[int]
    SECOND_MOMENT_FIELD_NUMBER: _ClassVar[int]
    HYPER_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SECAGG_SESSION_JSON_FIELD_NUMBER: _ClassVar[int]
    SECAGG_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    DEADLINES_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_JSON_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    round_number: int
    model_version: int
    task: str
    algorithm: str
    layout_fingerprint: str
    block_mode: str
    model: BlobRef
    global_update: BlobRef
    second_moment: BlobRef
    hyper: Hyperparameters
    local_steps: int
    global_step: int
    batch_size: int
    secagg_session_json: str
    secagg_id: int
    chunk_elements: int
    total_chunks: int
    deadlines: _containers.RepeatedCompositeFieldContainer[PhaseDeadline]
    quantization_json: str
    secure_aggregation: bool
    phase: Phase
    def __init__(self, round_id: _Optional[str] = ..., round_number: _Optional[int] = ..., model_version: _Optional[int] = ..., task: _Optional[str] = ..., algorithm: _Optional[str] = ..., layout_fingerprint: _Optional[str] = ..., block_mode: _Optional[str] = ..., model: _Optional[_Union[BlobRef, _Mapping]] = ..., global_update: _Optional[_Union[BlobRef, _Mapping]] = ..., second_moment: _Optional[_Union[BlobRef, _Mapping]] = ..., hyper: _Optional[_Union[Hyperparameters, _Mapping]] = ..., local_steps: _Optional[int] = ..., global_step: _Optional[int] = ..., batch_size: _Optional[int] = ..., secagg_session_json: _Optional[str] = ..., secagg_id: _Optional[int] = ..., chunk_elements: _Optional[int] = ..., total_chunks: _Optional[int] = ..., deadlines: _Optional[_Iterable[_Union[PhaseDeadline, _Mapping]]] = ..., quantization_json: _Optional[str] = ..., secure_aggregation: _Optional[bool] = ..., phase: _Optional[_Union[Phase, str]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("sha256", "start_chunk", "round_id", "phase")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    START_CHUNK_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    start_chunk: int
    round_id: str
    phase: Phase
    def __init__(self, sha256: _Optional[str] = ..., start_chunk: _Optional[int] = ..., round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("index", "total_chunks", "total_size", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    total_chunks: int
    total_size: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., total_chunks: _Optional[int] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AdvertisedKeys(_message.Message):
    __slots__ = ("secagg_id", "identity_key", "encryption_key", "masking_key", "signature", "self_mask_commitment")
    SECAGG_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASKING_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    secagg_id: int
    identity_key: bytes
    encryption_key: bytes
    masking_key: bytes
    signature: bytes
    self_mask_commitment: bytes
    def __init__(self, secagg_id: _Optional[int] = ..., identity_key: _Optional[bytes] = ..., encryption_key: _Optional[bytes] = ..., masking_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., self_mask_commitment: _Optional[bytes] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("sender", "recipient", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: int
    recipient: int
    ciphertext: bytes
    def __init__(self, sender: _Optional[int] = ..., recipient: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class SurvivorSignature(_message.Message):
    __slots__ = ("secagg_id", "signature")
    SECAGG_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    secagg_id: int
    signature: bytes
    def __init__(self, secagg_id: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class KeysBroadcast(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[AdvertisedKeys]
    def __init__(self, keys: _Optional[_Iterable[_Union[AdvertisedKeys, _Mapping]]] = ...) -> None: ...

class SharesDelivery(_message.Message):
    __slots__ = ("session_id", "shares", "dead")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    dead: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[bytes] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ..., dead: _Optional[_Iterable[int]] = ...) -> None: ...

class ConsistencyRequest(_message.Message):
    __slots__ = ("session_id", "alive", "dead")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    alive: _containers.RepeatedScalarFieldContainer[int]
    dead: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[bytes] = ..., alive: _Optional[_Iterable[int]] = ..., dead: _Optional[_Iterable[int]] = ...) -> None: ...

class UnmaskPrompt(_message.Message):
    __slots__ = ("session_id", "signatures")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[SurvivorSignature]
    def __init__(self, session_id: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[SurvivorSignature, _Mapping]]] = ...) -> None: ...

class RoundFinished(_message.Message):
    __slots__ = ("outcome", "model_version", "reason")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    outcome: Outcome
    model_version: int
    reason: str
    def __init__(self, outcome: _Optional[_Union[Outcome, str]] = ..., model_version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RoundEvent(_message.Message):
    __slots__ = ("round_id", "phase", "keys", "shares", "consistency", "unmask", "finished")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    keys: KeysBroadcast
    shares: SharesDelivery
    consistency: ConsistencyRequest
    unmask: UnmaskPrompt
    finished: RoundFinished
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., keys: _Optional[_Union[KeysBroadcast, _Mapping]] = ..., shares: _Optional[_Union[SharesDelivery, _Mapping]] = ..., consistency: _Optional[_Union[ConsistencyRequest, _Mapping]] = ..., unmask: _Optional[_Union[UnmaskPrompt, _Mapping]] = ..., finished: _Optional[_Union[RoundFinished, _Mapping]] = ...) -> None: ...

class AdvertiseKeysRequest(_message.Message):
    __slots__ = ("round_id", "phase", "encryption_key", "masking_key", "signature", "self_mask_commitment")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASKING_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    encryption_key: bytes
    masking_key: bytes
    signature: bytes
    self_mask_commitment: bytes
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., encryption_key: _Optional[bytes] = ..., masking_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., self_mask_commitment: _Optional[bytes] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("round_id", "phase", "session_id", "shares")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    session_id: bytes
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., session_id: _Optional[bytes] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class MaskedInputChunk(_message.Message):
    __slots__ = ("round_id", "phase", "chunk_index", "values")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    chunk_index: int
    values: bytes
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., chunk_index: _Optional[int] = ..., values: _Optional[bytes] = ...) -> None: ...

class UploadStatus(_message.Message):
    __slots__ = ("round_id", "total_chunks", "received_chunks", "complete", "phase")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    total_chunks: int
    received_chunks: _containers.RepeatedScalarFieldContainer[int]
    complete: bool
    phase: Phase
    def __init__(self, round_id: _Optional[str] = ..., total_chunks: _Optional[int] = ..., received_chunks: _Optional[_Iterable[int]] = ..., complete: _Optional[bool] = ..., phase: _Optional[_Union[Phase, str]] = ...) -> None: ...

class ConsistencySignatureRequest(_message.Message):
    __slots__ = ("round_id", "phase", "session_id", "signature")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    session_id: bytes
    signature: bytes
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., session_id: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("round_id", "phase", "session_id", "self_mask_shares", "key_shares")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    session_id: bytes
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    key_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., session_id: _Optional[bytes] = ..., self_mask_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., key_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

class AbortRoundRequest(_message.Message):
    __slots__ = ("round_id", "phase", "reason")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    reason: str
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("round_id", "phase")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("round_id", "phase", "status")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    phase: Phase
    status: str
    def __init__(self, round_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., status: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("server_unix_ms",)
    SERVER_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    server_unix_ms: int
    def __init__(self, server_unix_ms: _Optional[int] = ...) -> None: ...
