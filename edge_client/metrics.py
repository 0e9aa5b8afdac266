"""The agent's own Prometheus metrics, served only when ``--metrics-port`` is given.

Nothing here describes the device's data or its training loss: only participation,
timings and traffic.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["AgentMetrics"]

_SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter(
            "fedadamw_agent_rounds_total",
            "Rounds this agent was selected for, by how they ended for it.",
            ["outcome"],
            registry=r,
        )
        self.round_seconds = Histogram(
            "fedadamw_agent_round_duration_seconds",
            "Wall time of this agent's rounds, from selection to the end.",
            buckets=_SECONDS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "fedadamw_agent_stage_duration_seconds",
            "This agent's own time per round, by stage (download, keys, training, quantize, "
            "masking, upload, unmask).",
            ["stage"],
            buckets=_SECONDS,
            registry=r,
        )
        self.local_steps = Counter(
            "fedadamw_agent_local_steps_total", "Local training steps taken.", registry=r
        )
        self.transferred_bytes = Counter(
            "fedadamw_agent_transferred_bytes_total",
            "Bytes downloaded and uploaded, by direction.",
            ["direction"],
            registry=r,
        )
        self.connected = Gauge(
            "fedadamw_agent_connected",
            "1 while the last call to the coordinator succeeded, else 0.",
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])
