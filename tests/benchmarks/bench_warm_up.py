"""What an agent's first round costs, with and without the warm-up before its check-in.

Each measurement is a fresh process, as an agent is after it starts: it builds the task's
``LocalTraining`` on its own data (CPU), then, if warmed, runs ``LocalTraining.warm_up``
(the one throwaway step ``fedadamw-edge run`` takes before it checks in), and times the
update of round 0 and of round 1 (K = 20 local FedAdamW steps each, the coordinator's
default). Cold and warm processes alternate, ``--repeats`` of each, in one run; the table
gives medians. Round 0's training is what the whole cohort waits for, after selection.

    python -m tests.benchmarks warm-up [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

TASKS = ("digits-cnn", "digits-vit")
LOCAL_STEPS = 20


def _measure(task_name: str, warm: bool) -> dict[str, float]:
    import numpy as np
    import torch

    from edge_client.session import RoundInputs
    from edge_client.training import LocalTraining
    from fedadamw.blocks import BlockMode, BlockPartition
    from fedadamw.tasks import ClientDataSpec, load_task
    from wire.v1 import edge_pb2 as pb

    task = load_task(task_name)
    training = LocalTraining(
        task=task,
        data=task.client_data(ClientDataSpec.parse_partition("0/8", seed=0)),
        device=torch.device("cpu"),
        client_id=1,
    )
    warm_up = training.warm_up() if warm else 0.0
    blocks = BlockPartition.build(
        training.layout, BlockMode.parse("tensor"), head_blocks=training.head_blocks
    ).num_blocks
    model = training.layout.read(task.build_model(seed=1)).numpy()
    seconds = []
    for version in (0, 1):
        config = pb.RoundConfig(
            round_id=f"round-{version}",
            model_version=version,
            task=task_name,
            algorithm="fedadamw",
            layout_fingerprint=training.layout.fingerprint,
            block_mode="tensor",
            hyper=pb.Hyperparameters(
                lr=0.003, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, alpha=0.5
            ),
            local_steps=LOCAL_STEPS,
            global_step=version * LOCAL_STEPS,
            batch_size=32,
        )
        inputs = RoundInputs(
            config=config,
            model=model,
            global_update=np.zeros_like(model),
            second_moment=np.full(blocks, 1e-4),
        )
        started = time.perf_counter()
        training(inputs)
        seconds.append(time.perf_counter() - started)
    return {"warm_up": warm_up, "round0": seconds[0], "round1": seconds[1]}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        print(json.dumps(_measure(argv[1], argv[2] == "warm")))
        return 0
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_warm_up")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="digits-cnn, 2 repeats")
    args = parser.parse_args(argv)
    tasks = TASKS[:1] if args.quick else TASKS
    repeats = 2 if args.quick else args.repeats
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    print(
        "| task | agent | warm-up before check-in (s) | round 0 training (s) "
        "| round 1 training (s) | round 0 ÷ round 1 |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for task in tasks:
        runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
        for _ in range(repeats):
            for kind in ("cold", "warm"):
                out = subprocess.run(
                    [sys.executable, "-m", "tests.benchmarks.bench_warm_up", "--child", task, kind],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for kind, rows in runs.items():
            median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            print(
                f"| {task} | {kind} | {median['warm_up']:.3f} | {median['round0']:.3f} "
                f"| {median['round1']:.3f} | {median['round0'] / median['round1']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
