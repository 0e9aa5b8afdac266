"""The coordinator's Prometheus metrics (docs/architecture.md, section 7), on a registry of its own.

Names are ``fedadamw_*`` with the unit in the name. Label values come from enums (round
outcomes, phases, drop reasons, gRPC status codes), so each label maps one-to-one onto a
value the code already has.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from coordinator.domain import PHASE_ORDER, RoundPhase

__all__ = ["PHASE_NUMBERS", "Metrics"]

PHASE_NUMBERS = {phase: i + 1 for i, phase in enumerate(PHASE_ORDER)}  # 0: no open round

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """Every metric the coordinator exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rounds = Counter(
            "fedadamw_rounds_total", "Rounds finished, by outcome.", ["outcome"], registry=r
        )
        self.aborts = Counter(
            "fedadamw_round_aborts_total",
            "Rounds that ended without a model, by the phase they ended in and why.",
            ["phase", "reason"],
            registry=r,
        )
        self.forgers = Counter(
            "fedadamw_forged_shares_clients_total",
            "Clients whose revealed shares the others outvoted at unmasking (forged, or dealt "
            "so by the owner), by what followed: outvoted (the round went on) or aborted.",
            ["outcome"],
            registry=r,
        )
        self.configured_rounds = Gauge(
            "fedadamw_configured_rounds",
            "The number of model versions the coordinator is configured to commit.",
            registry=r,
        )
        self.selected = Counter(
            "fedadamw_selected_clients_total",
            "Clients selected into rounds (the denominator of the dropout rate).",
            registry=r,
        )
        self.round_seconds = Histogram(
            "fedadamw_round_duration_seconds",
            "Wall time of finished rounds, selection excluded.",
            buckets=_SECONDS,
            registry=r,
        )
        self.phase_seconds = Histogram(
            "fedadamw_round_phase_duration_seconds",
            "Wall time of each closed round phase.",
            ["phase"],
            buckets=_SECONDS,
            registry=r,
        )
        self.current_phase = Gauge(
            "fedadamw_round_phase",
            "The open round's phase: 1 advertise keys, 2 share keys, 3 masked input, "
            "4 consistency check, 5 unmasking; 0 when no round is open.",
            registry=r,
        )
        self.cohort = Gauge(
            "fedadamw_round_cohort_clients",
            "Clients selected into the open or last round.",
            registry=r,
        )
        self.survivors = Gauge(
            "fedadamw_round_survivors_clients",
            "Clients whose input the last finished round summed (0 if it aborted).",
            registry=r,
        )
        self.dropouts = Counter(
            "fedadamw_round_dropouts_total",
            "Clients dropped from rounds, by phase and reason.",
            ["phase", "reason"],
            registry=r,
        )
        self.connected = Gauge(
            "fedadamw_connected_clients",
            "Enrolled clients that called in the last 60 seconds.",
            registry=r,
        )
        self.waiting_clients = Gauge(
            "fedadamw_selection_waiting_clients",
            "Agents of the task waiting in check-in for the next round to select them.",
            registry=r,
        )
        self.selection_waiting_seconds = Gauge(
            "fedadamw_selection_waiting_seconds",
            "How long the next round has waited for enough agents to start (0 once it starts).",
            registry=r,
        )
        self.enrolled = Gauge(
            "fedadamw_enrolled_clients", "Enrolled clients that are not revoked.", registry=r
        )
        self.received_bytes = Counter(
            "fedadamw_received_bytes_total",
            "Payload bytes received from agents, by kind.",
            ["kind"],
            registry=r,
        )
        self.sent_bytes = Counter(
            "fedadamw_sent_bytes_total",
            "Payload bytes sent to agents, by kind.",
            ["kind"],
            registry=r,
        )
        self.driver_faults = Counter(
            "fedadamw_round_driver_faults_total",
            "Store or blob errors that stopped the round driver, by what it was doing "
            "(open_round, close_phase, commit, abort, restore) and the error kind; each is "
            "retried with backoff.",
            ["stage", "kind"],
            registry=r,
        )
        self.driver_stalled = Gauge(
            "fedadamw_round_driver_stalled",
            "1 while the round driver cannot make progress (it retries a store or blob "
            "error), else 0; the health service says NOT_SERVING meanwhile.",
            registry=r,
        )
        self.dependency_failing = Gauge(
            "fedadamw_dependency_failing",
            "1 while requests are refused because a dependency (database, storage) fails, else 0.",
            ["dependency"],
            registry=r,
        )
        self.dependency_refusals = Counter(
            "fedadamw_dependency_refusals_total",
            "Requests refused with UNAVAILABLE because a dependency (database, storage) failed.",
            ["dependency"],
            registry=r,
        )
        self.unmask_seconds = Histogram(
            "fedadamw_secagg_unmask_duration_seconds",
            "Time to remove the masks and finish a round's sum.",
            buckets=_SECONDS,
            registry=r,
        )
        self.clipped_values = Counter(
            "fedadamw_secagg_clipped_values_total",
            "Model-delta values clipped by quantization (securely summed counts).",
            registry=r,
        )
        self.samples = Counter(
            "fedadamw_trained_samples_total",
            "Samples the summed clients trained on (securely summed).",
            registry=r,
        )
        self.train_loss = Gauge(
            "fedadamw_round_train_loss",
            "Mean local training loss of the last committed round's clients (securely summed).",
            registry=r,
        )
        self.model_version = Gauge(
            "fedadamw_model_version", "The latest committed model version.", registry=r
        )
        self.retained_versions = Gauge(
            "fedadamw_retained_model_versions",
            "Model versions whose blobs the retention policy keeps (the newest ones, pinned "
            "ones and the open round's).",
            registry=r,
        )
        self.blob_store_bytes = Gauge(
            "fedadamw_blob_store_bytes",
            "Bytes of the blobs in the blob store after the last retention pass.",
            registry=r,
        )
        self.test_loss = Gauge(
            "fedadamw_global_test_loss",
            "Held-out loss of the latest evaluated model version.",
            registry=r,
        )
        self.test_accuracy = Gauge(
            "fedadamw_global_test_accuracy_ratio",
            "Held-out accuracy (0 to 1) of the latest evaluated model version.",
            registry=r,
        )
        self.requests = Counter(
            "fedadamw_grpc_requests_total",
            "gRPC requests handled, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "fedadamw_grpc_request_duration_seconds",
            "gRPC request handling time, by method (streams: the whole stream).",
            ["method"],
            buckets=_SECONDS,
            registry=r,
        )

    def set_phase(self, phase: RoundPhase | None) -> None:
        self.current_phase.set(PHASE_NUMBERS.get(phase, 0) if phase is not None else 0)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``host:port`` from a background thread; returns the port.

        Port 0 picks a free one. ``close`` stops it.
        """
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_address[1])

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
            http.server_close()
