"""The coordinator's configuration: a TOML file, then command-line flags over it.

Every key is optional; the defaults train the built-in ``digits-cnn`` task. A full file::

    task = "digits-cnn"         # task name or module:attr
    algorithm = "fedadamw"      # fedadamw, fedadamw-full, fedavg-adamw, fedavg, ...
    rounds = 20                 # rounds to commit, then the service idles
    cohort = 8                  # clients a round aims to finish with
    min_clients = 3             # fewer survivors than this abort the round
    over_selection = 0.25       # select up to cohort × (1 + over_selection) of the waiting agents
    local_steps = 20            # K
    batch_size = 32
    seed = 0                    # the initial model's seed
    lr = 3e-3                   # η0, annealed per round by `schedule`
    schedule = "cosine"         # or "constant"

    [fedadamw]
    beta1 = 0.9
    beta2 = 0.999
    eps = 1e-8
    weight_decay = 0.01
    alpha = 0.5
    clip_norm = 10.0            # 0 turns clipping off
    server_lr = 1.0

    [secure_aggregation]
    enabled = true              # false: plain sums, for comparison only
    threshold = 0               # t; 0 picks it from cohort size and rates below
    degree = 0                  # k; 0 picks it (complete graph for small cohorts)
    dropout_rate = 0.1
    corrupt_rate = 0.05
    ring_bits = 32              # 32 or 64
    delta_clip_factor = 2.0     # deltas clip at factor × K × η_r per coordinate
    moment_max = 1.0            # second-moment means clip at this (they are ≤ clip_norm²)

    [deadlines]                 # seconds
    selection = 60              # wait this long for a full cohort, then go with min_clients
    advertise_keys = 60
    share_keys = 60
    masked_input = 600          # includes download and local training
    consistency_check = 60
    unmasking = 60
    restart_grace = 60          # after a restart, the open phase gets at least this long

    [limits]
    chunk_elements = 262144     # ring elements per upload chunk
    concurrent_uploads = 16     # upload streams read at once (memory: about 3 MB each)
    checkin_wait = 20           # longest a check-in is held, seconds
    rate_per_second = 50        # requests per client per second (burst 4×)

    [retention]                 # docs/architecture.md, section 5
    keep_versions = 5           # the newest model versions whose blobs are kept (at least 1),
                                # besides pinned ones (exported, or `version pin N`)
    keep_rounds = 1000          # the newest rounds `status` keeps as history (at least 1)
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.errors import CoordinatorError, ErrorCode

__all__ = [
    "CoordinatorConfig",
    "Deadlines",
    "FedAdamWSettings",
    "Limits",
    "RetentionSettings",
    "SecureAggregationSettings",
    "load_config",
]


def _invalid(message: str) -> CoordinatorError:
    return CoordinatorError(ErrorCode.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class FedAdamWSettings:
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    alpha: float = 0.5
    clip_norm: float = 10.0
    server_lr: float = 1.0


@dataclass(frozen=True)
class SecureAggregationSettings:
    enabled: bool = True
    threshold: int = 0
    degree: int = 0
    dropout_rate: float = 0.1
    corrupt_rate: float = 0.05
    ring_bits: int = 32
    delta_clip_factor: float = 2.0
    moment_max: float = 1.0


@dataclass(frozen=True)
class Deadlines:
    selection: float = 60.0
    advertise_keys: float = 60.0
    share_keys: float = 60.0
    masked_input: float = 600.0
    consistency_check: float = 60.0
    unmasking: float = 60.0
    restart_grace: float = 60.0


@dataclass(frozen=True)
class Limits:
    chunk_elements: int = 262_144
    concurrent_uploads: int = 16
    checkin_wait: float = 20.0
    rate_per_second: float = 50.0


@dataclass(frozen=True)
class RetentionSettings:
    """What the coordinator keeps of past model versions (docs/architecture.md, section 5)."""

    keep_versions: int = 5
    keep_rounds: int = 1000


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything a coordinator runs with. ``load_config`` builds and validates it."""

    task: str = "digits-cnn"
    algorithm: str = "fedadamw"
    rounds: int = 20
    cohort: int = 8
    min_clients: int = 3
    over_selection: float = 0.25
    local_steps: int = 20
    batch_size: int = 32
    seed: int = 0
    lr: float = 3e-3
    schedule: str = "cosine"
    fedadamw: FedAdamWSettings = field(default_factory=FedAdamWSettings)
    secure_aggregation: SecureAggregationSettings = field(default_factory=SecureAggregationSettings)
    deadlines: Deadlines = field(default_factory=Deadlines)
    limits: Limits = field(default_factory=Limits)
    retention: RetentionSettings = field(default_factory=RetentionSettings)

    def __post_init__(self) -> None:
        positive = {
            "rounds": self.rounds,
            "cohort": self.cohort,
            "min_clients": self.min_clients,
            "local_steps": self.local_steps,
            "batch_size": self.batch_size,
        }
        if bad := [name for name, value in positive.items() if value < 1]:
            raise _invalid(f"{', '.join(bad)} must be at least 1")
        if self.min_clients > self.cohort:
            raise _invalid(f"min_clients ({self.min_clients}) exceeds cohort ({self.cohort})")
        if self.min_clients < 2 and self.secure_aggregation.enabled:
            raise _invalid("secure aggregation needs min_clients >= 2")
        if not (self.over_selection >= 0 and math.isfinite(self.over_selection)):
            raise _invalid(f"over_selection must be >= 0, got {self.over_selection}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise _invalid(f"lr must be > 0, got {self.lr}")
        if self.schedule not in {"cosine", "constant"}:
            raise _invalid(f"schedule must be cosine or constant, got {self.schedule!r}")
        sa = self.secure_aggregation
        if sa.ring_bits not in {32, 64}:
            raise _invalid(f"ring_bits must be 32 or 64, got {sa.ring_bits}")
        if sa.threshold < 0 or sa.degree < 0:
            raise _invalid("threshold and degree must be >= 0 (0 chooses automatically)")
        if not (0 <= sa.dropout_rate < 1 and 0 <= sa.corrupt_rate < 1):
            raise _invalid("dropout_rate and corrupt_rate must be in [0, 1)")
        if not (sa.delta_clip_factor > 0 and sa.moment_max > 0):
            raise _invalid("delta_clip_factor and moment_max must be > 0")
        if any(not (v > 0) for v in dataclasses.astuple(self.deadlines)):
            raise _invalid("every deadline must be > 0 seconds")
        limits = self.limits
        if limits.chunk_elements < 1 or limits.chunk_elements > 1 << 20:
            raise _invalid("chunk_elements must be in [1, 1048576]")
        if limits.concurrent_uploads < 1:
            raise _invalid("concurrent_uploads must be at least 1")
        if not (limits.checkin_wait > 0 and limits.rate_per_second > 0):
            raise _invalid("checkin_wait and rate_per_second must be > 0")
        if self.retention.keep_versions < 1:
            raise _invalid(
                f"[retention] keep_versions must be at least 1, got "
                f"{self.retention.keep_versions}: the latest version is the one the open "
                "round trains from and a restart resumes from"
            )
        if self.retention.keep_rounds < 1:
            raise _invalid(
                f"[retention] keep_rounds must be at least 1, got {self.retention.keep_rounds}: "
                "the newest round numbers the next one"
            )

    @property
    def selected(self) -> int:
        """How many clients a round selects: the cohort plus the over-selection margin."""
        return math.ceil(self.cohort * (1 + self.over_selection))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type[Any]] = {
    "fedadamw": FedAdamWSettings,
    "secure_aggregation": SecureAggregationSettings,
    "deadlines": Deadlines,
    "limits": Limits,
    "retention": RetentionSettings,
}


def _build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    if unknown := sorted(set(data) - set(known)):
        raise _invalid(f"unknown setting(s) in {where}: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in _SECTIONS and where == "the top level":
            if not isinstance(value, Mapping):
                raise _invalid(f"[{name}] must be a table")
            values[name] = _build(_SECTIONS[name], value, f"[{name}]")
            continue
        default = getattr(cls(), name) if name not in _SECTIONS else None
        values[name] = _coerce(value, default, f"{where}: {name}")
    return cls(**values)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _invalid(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(value, bool) and isinstance(value, int):
        return value
    if (
        isinstance(default, float)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    ):
        return float(value)
    if isinstance(default, str) and isinstance(value, str):
        return value
    raise _invalid(f"{where} must be a {type(default).__name__}, got {value!r}")


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> CoordinatorConfig:
    """The configuration from ``path`` (TOML; None for the defaults), then ``overrides``.

    ``overrides`` holds top-level keys (the command line's ``--task``, ``--rounds``, ...);
    None values are ignored. Raises ``CoordinatorError(INVALID_ARGUMENT)`` naming the file
    and key for an unreadable file, an unknown key, a wrong type or a value out of range.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise _invalid(f"config file {path} does not exist") from exc
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise _invalid(f"cannot read config file {path}: {exc}") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    where = "the top level"
    try:
        config: CoordinatorConfig = _build(CoordinatorConfig, data, where)
    except CoordinatorError as exc:
        source = f"{path}: " if path is not None else ""
        raise _invalid(f"{source}{exc}") from exc
    return config
