"""``fedadamw-edge``: the agent a device owner installs and forgets.

enroll   make this device's keys and enroll with a single-use token (once)
run      take part in training rounds until stopped (SIGTERM or Ctrl-C exit cleanly)
status   show the enrollment and the last round taken part in
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc

from edge_client.entry import exit_now
from edge_client.errors import EdgeError, ErrorCode
from edge_client.state import AgentInfo, StateDir
from secure_agg.threshold import DEFAULT_CORRUPT_RATE

__all__ = ["main"]

log = logging.getLogger("edge_client")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _logging(args.log_level, json_lines=getattr(args, "log_format", "text") == "json")
    try:
        code: int = args.run(args)
    except EdgeError as exc:
        print(f"fedadamw-edge: error: {exc}", file=sys.stderr)
        return 2
    return code


def _logging(level: str, *, json_lines: bool) -> None:
    import time

    class Json(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps(
                {
                    "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                    "level": record.levelname,
                    "logger": record.name,
                    "msg": record.getMessage(),
                }
            )

    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(Json())
    else:
        text = logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ"
        )
        text.converter = time.gmtime
        handler.setFormatter(text)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _rate(text: str) -> float:
    """An argparse type: a fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedadamw-edge",
        description=(
            "The FedAdamW edge agent: trains a shared model on this device's own data, in "
            "rounds led by a coordinator, and uploads only masked updates (secure "
            "aggregation). Enroll once, then run it as a service."
        ),
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    enroll = commands.add_parser(
        "enroll",
        help="enroll this device with a token (once)",
        description=(
            "Generate this device's identity and TLS keys in --state-dir (mode 0700; the "
            "private keys never leave it) and enroll with the coordinator using a single-use "
            "token from `fedadamw-coordinator token create`. Enrollment uses the "
            "coordinator's enrollment port, by default the agent port + 1."
        ),
    )
    enroll.add_argument(
        "--coordinator", required=True, help="HOST:PORT of the coordinator's agent port"
    )
    enroll.add_argument("--token", required=True, help="the single-use enrollment token")
    enroll.add_argument(
        "--ca-cert", type=Path, help="the coordinator's CA certificate (its DIR/tls/ca.pem)"
    )
    enroll.add_argument(
        "--state-dir", type=Path, required=True, help="where this agent keeps its state"
    )
    enroll.add_argument(
        "--enroll-address", default=None, help="HOST:PORT of enrollment (default: port + 1)"
    )
    enroll.add_argument("--label", default="", help="a name operators see, e.g. the host name")
    enroll.add_argument(
        "--insecure",
        action="store_true",
        help="the coordinator runs --insecure (no TLS): loopback development only",
    )
    enroll.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: INFO)",
    )
    enroll.set_defaults(run=_enroll)

    run = commands.add_parser(
        "run",
        help="take part in rounds until stopped",
        description=(
            "Check in with the coordinator and take part in the rounds it selects this agent "
            "for: download the model, train K local FedAdamW steps on this device's data, "
            "upload the masked update. Survives coordinator restarts and network loss; "
            "SIGTERM or Ctrl-C stops it cleanly."
        ),
    )
    run.add_argument("--state-dir", type=Path, required=True, help="the directory `enroll` filled")
    run.add_argument(
        "--task",
        default="digits-cnn",
        help="the task this device trains: name or module:attr (default: digits-cnn)",
    )
    run.add_argument(
        "--data", type=Path, default=None, help="this device's data, for tasks that read files"
    )
    run.add_argument(
        "--partition", default=None, help="built-in tasks: this device's share i/N of the data"
    )
    run.add_argument(
        "--dirichlet",
        type=float,
        default=0.5,
        help="built-in tasks: the split's Dirichlet alpha (default: 0.5)",
    )
    run.add_argument(
        "--seed", type=int, default=0, help="built-in tasks: the split's seed (default: 0)"
    )
    run.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present; the default), cpu, cuda or cuda:i",
    )
    run.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    run.add_argument(
        "--metrics-port", type=int, default=None, help="serve this agent's metrics (off by default)"
    )
    run.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics listen on: 0.0.0.0 lets a Prometheus elsewhere scrape "
        "(default: 127.0.0.1)",
    )
    run.add_argument(
        "--max-model-bytes",
        type=int,
        default=256 << 20,
        help="refuse rounds with a larger model (default: 256 MiB)",
    )
    run.add_argument(
        "--corrupt-rate",
        type=_rate,
        default=DEFAULT_CORRUPT_RATE,
        help="the fraction of the cohort this agent assumes may collude with a lying "
        "coordinator; it refuses, before revealing anything, a secure-aggregation threshold "
        "t that such a coalition could break: it needs 2t > (its share holders) + (the "
        "corrupt holders this fraction implies) "
        f"(default: {DEFAULT_CORRUPT_RATE}, the coordinator's default corrupt_rate)",
    )
    run.add_argument(
        "--allow-plain",
        action="store_true",
        help="also take part in rounds without secure aggregation",
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: INFO)",
    )
    run.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one object per line (default: text)",
    )
    run.set_defaults(run=_run)

    status = commands.add_parser("status", help="show enrollment and the last round")
    status.add_argument("--state-dir", type=Path, required=True, help="the agent's state directory")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: WARNING)",
    )
    status.set_defaults(run=_status)
    return parser


def _enroll_address(coordinator: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    host, sep, port = coordinator.rpartition(":")
    if not sep or not port.isdigit():
        raise EdgeError(
            ErrorCode.INVALID_ARGUMENT, f"--coordinator must be HOST:PORT, got {coordinator!r}"
        )
    return f"{host}:{int(port) + 1}"


def _enroll(args: argparse.Namespace) -> int:
    from edge_client.enrollment import enroll, enroll_insecure

    state = StateDir(args.state_dir)
    if state.enrolled:
        raise EdgeError(
            ErrorCode.ALREADY_ENROLLED,
            f"{args.state_dir} already holds an enrollment (client {state.info().client_id}); "
            "use another --state-dir to enroll again",
        )
    address = _enroll_address(args.coordinator, args.enroll_address)
    try:
        if args.insecure:
            credentials = asyncio.run(
                enroll_insecure(address=address, token=args.token, label=args.label)
            )
        else:
            if args.ca_cert is None:
                raise EdgeError(ErrorCode.INVALID_ARGUMENT, "--ca-cert is required (or --insecure)")
            try:
                ca = args.ca_cert.read_bytes()
            except OSError as exc:
                raise EdgeError(
                    ErrorCode.INVALID_ARGUMENT, f"cannot read --ca-cert: {exc}"
                ) from exc
            credentials = asyncio.run(
                enroll(address=address, ca_certificate_pem=ca, token=args.token, label=args.label)
            )
    except grpc.aio.AioRpcError as exc:
        raise EdgeError(
            ErrorCode.ENROLLMENT,
            f"enrollment at {address} failed: {exc.code().name}: {exc.details()}",
        ) from exc
    state.save_enrollment(
        credentials,
        AgentInfo(
            client_id=credentials.client_id,
            coordinator=args.coordinator,
            enrolled_at=datetime.now(UTC).isoformat(timespec="seconds"),
            label=args.label,
            insecure=args.insecure,
        ),
    )
    print(f"enrolled as client {credentials.client_id}; state in {args.state_dir}")
    return 0


def _run(args: argparse.Namespace) -> int:
    # A stop request while starting (importing torch, loading the data) has nothing to
    # finish: exit 0 at once. The agent's loop takes SIGTERM and SIGINT over below.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_while_starting)
    import torch

    from edge_client.agent import Agent, Limits
    from edge_client.metrics import AgentMetrics
    from edge_client.progress import StageProgress
    from edge_client.training import LocalTraining, select_device
    from fedadamw.errors import FedAdamWError
    from fedadamw.tasks import ClientDataSpec, load_task

    state = StateDir(args.state_dir)
    info = state.info()
    state.credentials()  # fail now, clearly, on a damaged state directory
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        task = load_task(args.task)
        if args.partition is not None:
            spec = ClientDataSpec.parse_partition(
                args.partition, dirichlet=args.dirichlet, seed=args.seed, data_path=args.data
            )
        else:
            spec = ClientDataSpec(data_path=args.data)
        data = task.client_data(spec)
    except FedAdamWError as exc:
        raise EdgeError(ErrorCode.INVALID_ARGUMENT, str(exc)) from exc
    device = select_device(args.device)
    metrics = AgentMetrics() if args.metrics_port is not None else None
    progress = StageProgress()

    def on_step(done: int, total: int) -> None:
        progress.step(done, total)
        if metrics is not None:
            metrics.local_steps.inc()

    training = LocalTraining(
        task=task, data=data, device=device, client_id=info.client_id, on_step=on_step
    )
    agent = Agent(
        state=state,
        training=training,
        limits=Limits(
            max_model_bytes=args.max_model_bytes,
            corrupt_rate=args.corrupt_rate,
            allow_plain=args.allow_plain,
        ),
        metrics=metrics,
        progress=progress.transfer,
    )
    if metrics is not None:
        port = metrics.serve(args.metrics_port, args.metrics_host)
        log.info("agent metrics on %s:%d/metrics", args.metrics_host, port)
    log.info("%d samples of %s on %s", data.num_samples, task.name, device)
    try:
        seconds = training.warm_up()
    except FedAdamWError as exc:
        raise EdgeError(ErrorCode.INVALID_ARGUMENT, f"cannot train on this data: {exc}") from exc
    log.info("warmed up in %.1fs (one local step, before checking in)", seconds)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stopper(agent.request_stop, sig))
        return await agent.run()

    return asyncio.run(main())


def _exit_while_starting(signum: int, frame: object) -> None:
    log.info("%s received while starting: exiting", signal.Signals(signum).name)
    exit_now()  # not SystemExit: see edge_client/entry.py


def _stopper(stop: Callable[[], None], sig: signal.Signals) -> Callable[[], None]:
    def handler() -> None:
        log.info("%s received: stopping after the current step", sig.name)
        stop()

    return handler


def _status(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    if not state.enrolled:
        raise EdgeError(
            ErrorCode.STATE, f"{args.state_dir} holds no enrollment; run `fedadamw-edge enroll`"
        )
    report = state.describe()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    label = report["label"] or "no label"
    print(f"client {report['client_id']} ({label}), enrolled {report['enrolled_at']}")
    print(f"coordinator {report['coordinator']}{' (INSECURE)' if report['insecure'] else ''}")
    last = report["last_round"]
    if last is None:
        print("no round taken part in yet")
    else:
        version = f", model version {last['model_version']}" if last["model_version"] else ""
        reason = f" ({last['reason']})" if last["reason"] else ""
        when = last["finished_at"]
        print(f"last round {last['round_id']}: {last['outcome']}{version}{reason} at {when}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
