"""An agent's time per round, split into download, key exchange, training, masking, upload
and unmask, for ``digits-vit`` and for a synthetic model of 10M parameters.

A real coordinator (``fedadamw-coordinator run``, SQLite, TLS) runs two rounds with three
agents in this process: each is the agent's own ``RoundSession`` with its own
``LocalTraining`` (real FedAdamW steps on its data, on the CPU). The first round warms up
(imports, allocations); the table reports the second, as each agent's own time per stage
(``RoundSession.timings``: its work and its calls, not its waits for the others):

- download: x, ΔG and v̄ (overlaps the key phases);
- keys: advertising keys, checking the broadcast, sharing and opening shares;
- training: K = 20 local FedAdamW steps;
- quantize: fixed-point encoding of [Δ | v̄ | statistics];
- masking: adding the self mask and the pair masks (SecAgg+);
- upload: the chunked, acknowledged upload;
- unmask: signing the survivor set and revealing shares.

The secure-aggregation share is (keys + masking + unmask) over the sum of the stages. The
three agents share two CPU cores, so training is slower than on a device of its own.

    python -m tests.benchmarks agent [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_client.session import STAGES, RoundSession
from edge_client.training import LocalTraining
from fedadamw.tasks import ClientData, ClientDataSpec, Task, TensorClientData, load_task
from tests.e2e.harness import FAST, Coordinator, TestAgent, merged

SECURE_STAGES = ("keys", "masking", "unmask")


class Synthetic10M(Task):
    """A 2,500 × 4,000 linear map (10,004,000 parameters) fitted to random targets."""

    name = "tests.benchmarks.bench_agent:Synthetic10M"
    description = "a synthetic model of 10M parameters"

    def build_model(self, *, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Linear(2500, 4000)

    def client_data(self, spec: ClientDataSpec) -> ClientData:
        generator = torch.Generator().manual_seed(1000 + spec.partition)
        return TensorClientData(
            torch.randn(128, 2500, generator=generator), torch.randn(128, 4000, generator=generator)
        )

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs, targets)


async def _rounds(task_name: str, root: Path, agents_count: int) -> list[dict[str, float]]:
    settings = merged(
        FAST,
        task=task_name,
        rounds=2,
        cohort=agents_count,
        min_clients=agents_count,
        local_steps=20,
        lr=1e-3,
        deadlines={"advertise_keys": 120, "share_keys": 120, "masked_input": 900, "unmasking": 120},
        limits={"chunk_elements": 262144},
    )
    coordinator = Coordinator(root, settings)
    await asyncio.to_thread(coordinator.start, timeout=180)
    try:
        agents = await TestAgent.many(coordinator, root, agents_count)
        task = load_task(task_name)
        trainings = [
            LocalTraining(
                task=task,
                data=task.client_data(
                    ClientDataSpec(partition=i, num_partitions=agents_count, dirichlet=0.5)
                ),
                device=torch.device("cpu"),
                client_id=agent.credentials.client_id,
            )
            for i, agent in enumerate(agents)
        ]
        timings: list[dict[str, float]] = []
        for round_index in range(2):
            assignments = await asyncio.gather(
                *(a.assignment(timeout=300, task=task_name) for a in agents)
            )
            sessions: list[RoundSession] = [
                a.session(assignment, training)
                for a, assignment, training in zip(agents, assignments, trainings, strict=True)
            ]
            started = time.perf_counter()
            results = await asyncio.gather(*(s.run() for s in sessions))
            wall = time.perf_counter() - started
            if round_index == 1:
                for session in sessions:
                    timings.append({**session.timings, "wall": wall})
            assert all(r.outcome.value == "committed" for r in results), results
        for agent in agents:
            await agent.close()
        return timings
    finally:
        await asyncio.to_thread(coordinator.stop)


def _report(name: str, d: int, timings: list[dict[str, float]]) -> None:
    mean = {stage: statistics.mean(t[stage] for t in timings) for stage in (*STAGES, "wall")}
    total = sum(mean[stage] for stage in STAGES)
    secure = sum(mean[stage] for stage in SECURE_STAGES)
    cells = " ".join(f"{mean[stage]:9.3f}" for stage in STAGES)
    print(f"{name:13} {d:>11,} {cells} {total:8.2f} {mean['wall']:8.2f} {secure / total:10.1%}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="digits-vit only")
    parser.add_argument("--agents", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    torch.set_num_threads(1)
    tasks = ["digits-vit"] if args.quick else ["digits-vit", Synthetic10M.name]
    print(
        f"An agent's own seconds per round by stage (mean of {args.agents} agents, second of "
        "two rounds; K = 20, the default block mode; wall = the round as the agents saw it)"
    )
    header = " ".join(f"{stage:>9}" for stage in STAGES)
    print(f"{'task':13} {'parameters':>11} {header} {'total':>8} {'wall':>8} {'SecAgg share':>10}")
    for name in tasks:
        d = sum(p.numel() for p in load_task(name).build_model(seed=0).parameters())
        with tempfile.TemporaryDirectory(prefix="bench-agent-") as root:
            timings = asyncio.run(_rounds(name, Path(root), args.agents))
        short = "digits-vit" if name == "digits-vit" else "synthetic-10M"
        _report(short, d, timings)
    print("SecAgg share = (keys + masking + unmask) / total of the stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
