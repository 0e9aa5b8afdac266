"""``fedadamw-coordinator``: the coordinator service and its admin commands.

    run                 serve agents, running rounds until the configured number is committed
    token create        print a single-use enrollment token
    clients list        enrolled clients
    clients revoke ID   revoke a client at once
    status [--json]     model version, rounds with outcome, cohort, survivors, timings and
                        secure aggregation (t, k, ring bits) or plain sums
    export              write a model version as a torch state dict (and pin it)
    version list        model versions, whether their blobs are kept and pinned
    version pin N       keep version N's blobs whatever the retention policy says
    version unpin N     let the retention policy delete them again
    db upgrade          migrate the database to this version's schema

Every command takes ``--data-dir`` (and ``--db`` for PostgreSQL). ``run`` records its
database in the data directory (``DIR/database.json``, without the password); the admin
commands read and write that database directly, so they work while the service runs and
after it stops, and without ``--db`` (``coordinator.datadir``). Only ``run`` creates a data
directory or a database.

Exit codes: 0 done (``run``: stopped by SIGTERM or SIGINT); 1 the database could not be
reached (``run``: within ``--db-wait`` at start-up), which a supervisor should retry; 2 a
configuration or usage error (bad flags or TOML, not a data directory, a ``--db`` naming
another database than the recorded one, an outdated schema, a missing client or version),
which restarting does not cure; ``run`` also exits 3, 4 or 5 (``coordinator.server``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coordinator.config import CoordinatorConfig, load_config
from coordinator.datadir import (
    DEFAULT_DB_WAIT_S,
    admin_database_url,
    explain_unavailable,
    open_store,
    require_data_dir,
    service_database_url,
)
from coordinator.domain import REVOCATION_REFRESH, EnrollmentToken
from coordinator.errors import CoordinatorError, ErrorCode, StoreError
from coordinator.logs import configure_logging
from coordinator.retention import set_pin
from coordinator.status import (
    export_version,
    format_status,
    format_versions,
    status_report,
    versions_report,
)
from coordinator.store import Store
from coordinator.store.schema import current_revision, head_revision, upgrade
from coordinator.tokens import DEFAULT_TTL, hash_token, new_token, parse_ttl

__all__ = ["EXIT_CONFIGURATION", "EXIT_DATABASE_UNAVAILABLE", "main"]

EXIT_DATABASE_UNAVAILABLE = 1
"""The database could not be reached (by ``run``, not within ``--db-wait``): retry later."""

EXIT_CONFIGURATION = 2
"""Any other error: bad flags or settings, not a data directory, a mismatched ``--db``, an
outdated schema, a missing client or version. Restarting does not cure it (argparse exits
with 2 too)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(level=args.log_level, json_lines=args.log_format == "json")
    try:
        code: int = args.run(args)
    except CoordinatorError as exc:
        print(f"fedadamw-coordinator: error: {exc}", file=sys.stderr)
        if exc.code is ErrorCode.STORE_UNAVAILABLE:
            return EXIT_DATABASE_UNAVAILABLE
        return EXIT_CONFIGURATION
    except KeyboardInterrupt:
        return 130
    return code


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="the coordinator's data directory"
    )
    parser.add_argument(
        "--db",
        default=None,
        help=(
            "database URL, e.g. postgresql+psycopg://user@host/db (default: the database that "
            "run recorded in DIR/database.json, without its password: give that in --db or "
            "PGPASSWORD; run without a record: SQLite in --data-dir). Admin commands refuse "
            "a --db that names another database than the recorded one"
        ),
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one object per line (default: text)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedadamw-coordinator",
        description=(
            "The FedAdamW coordinator: runs rounds of federated AdamW with secure aggregation "
            "over enrolled edge agents, and its admin commands."
        ),
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="serve agents and run rounds",
        description=(
            "Serve edge agents: over mutual TLS on --listen, enrollment on --enroll-listen "
            "(default: port + 1). The first start creates the data directory, its SQLite "
            "database (or the schema in an empty --db), a CA and a server certificate "
            "(DIR/tls/ca.pem is what agents trust), and records the database in "
            "DIR/database.json for the admin commands. Settings come from --config (TOML, "
            "see coordinator/config.py) and the flags below override it. Exit codes: 0 "
            "stopped, 1 database unreachable (--db-wait ran out), 2 configuration error, "
            "3 standby timeout, 4 leader lock lost, 5 round driver died."
        ),
    )
    _common(run)
    run.add_argument(
        "--listen",
        default="0.0.0.0:7070",
        help="HOST:PORT for agents, mutual TLS (default: 0.0.0.0:7070)",
    )
    run.add_argument(
        "--enroll-listen", default=None, help="HOST:PORT for enrollment (default: port + 1)"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on this port (default: off)",
    )
    run.add_argument(
        "--metrics-host",
        default=None,
        help="the address /metrics listens on (default: the host of --listen)",
    )
    run.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    run.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS at all: for loopback development only, never on a network",
    )
    run.add_argument(
        "--server-name",
        action="append",
        default=[],
        help="a DNS name or IP agents reach this server by (repeatable; localhost is in)",
    )
    run.add_argument(
        "--standby-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=(
            "while another coordinator leads this data directory or database, wait as a "
            "standby (no ports, no rounds) at most SECONDS, then exit with code 3; 0: do not "
            "wait (default: wait forever)"
        ),
    )
    run.add_argument(
        "--db-wait",
        type=float,
        default=DEFAULT_DB_WAIT_S,
        metavar="SECONDS",
        help=(
            "at start-up, retry a database that cannot be reached for at most SECONDS "
            "(backoff, a WARNING per attempt), then exit with code 1 for the supervisor to "
            f"restart; 0: try once (default: {DEFAULT_DB_WAIT_S:g})"
        ),
    )
    # These override the configuration file; what they show is its default.
    d = CoordinatorConfig()
    run.add_argument("--task", default=None, help=f"task name or module:attr (default: {d.task})")
    run.add_argument(
        "--algorithm",
        default=None,
        help=f"fedadamw, fedadamw-full, fedavg-adamw, ... (default: {d.algorithm})",
    )
    run.add_argument(
        "--rounds", type=int, default=None, help=f"model versions to commit (default: {d.rounds})"
    )
    run.add_argument(
        "--cohort",
        type=int,
        default=None,
        help=f"agents a round starts with (default: {d.cohort})",
    )
    run.add_argument(
        "--min-clients",
        type=int,
        default=None,
        help=f"fewer survivors abort a round (default: {d.min_clients})",
    )
    run.add_argument(
        "--local-steps",
        type=int,
        default=None,
        help=f"local steps K per round (default: {d.local_steps})",
    )
    run.add_argument(
        "--lr", type=float, default=None, help=f"base learning rate η0 (default: {d.lr:g})"
    )
    run.set_defaults(run=_run)

    token = commands.add_parser("token", help="enrollment tokens").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = token.add_parser(
        "create",
        help="print a new single-use token",
        description="Print a new single-use enrollment token. Only its hash is stored.",
    )
    _common(create)
    create.add_argument("--ttl", default="24h", help="lifetime, e.g. 90s, 30m, 24h, 7d")
    create.add_argument("--count", type=int, default=1, help="how many tokens, one per line")
    create.set_defaults(run=_token_create)

    clients = commands.add_parser("clients", help="enrolled clients").add_subparsers(
        required=True, metavar="ACTION"
    )
    listing = clients.add_parser("list", help="list enrolled clients")
    _common(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=_clients_list)
    revoke = clients.add_parser(
        "revoke",
        help="revoke a client",
        description=(
            "Revoke a client. The command returns once running coordinators refuse it "
            f"(they read the revoked clients every {REVOCATION_REFRESH:g}s)."
        ),
    )
    _common(revoke)
    revoke.add_argument("client_id", type=int, help="the id `clients list` shows")
    revoke.set_defaults(run=_clients_revoke)

    status = commands.add_parser(
        "status",
        help="model version and rounds",
        description=(
            "Show the model version and rounds: each round's outcome, cohort, survivors, "
            "timings and its secure aggregation (threshold t, neighbour degree k or the "
            "complete graph, ring bits), or that it summed in plain."
        ),
    )
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--limit", type=int, default=50, help="rounds to show, newest first")
    status.set_defaults(run=_status)

    export = commands.add_parser(
        "export",
        help="write a model version as a torch state dict",
        description="Write a model version as a torch state dict (torch.load, load_state_dict).",
    )
    _common(export)
    export.add_argument("--version", type=int, default=None, help="default: the latest")
    export.add_argument(
        "--out", type=Path, required=True, help="the file to write (a torch state dict)"
    )
    export.add_argument("--task", default=None, help="default: the task of the stored rounds")
    export.set_defaults(run=_export)

    version = commands.add_parser(
        "version", help="model versions and the retention policy"
    ).add_subparsers(required=True, metavar="ACTION")
    versions = version.add_parser(
        "list",
        help="list model versions",
        description=(
            "List every model version, oldest first: when it was made, its global step and "
            "test accuracy, whether the retention policy still keeps its blobs, and whether "
            "it is pinned."
        ),
    )
    _common(versions)
    versions.add_argument("--json", action="store_true", help="machine-readable output")
    versions.set_defaults(run=_version_list)
    pin = version.add_parser(
        "pin",
        help="keep a version's blobs",
        description=(
            "Pin a model version: the retention policy ([retention] keep_versions) keeps its "
            "blobs until it is unpinned, so it can be exported later. A version whose blobs "
            "were already deleted cannot be pinned. Export pins the version it writes."
        ),
    )
    _common(pin)
    pin.add_argument("number", type=int, help="the version, as `version list` shows it")
    pin.set_defaults(run=_version_pin)
    unpin = version.add_parser(
        "unpin",
        help="release a pinned version",
        description=(
            "Unpin a model version: unless it is among the newest [retention] keep_versions, "
            "the coordinator deletes its blobs after the next commit or at its next start."
        ),
    )
    _common(unpin)
    unpin.add_argument("number", type=int, help="the version, as `version list` shows it")
    unpin.set_defaults(run=_version_unpin)

    db = commands.add_parser("db", help="database schema").add_subparsers(
        required=True, metavar="ACTION"
    )
    up = db.add_parser("upgrade", help="migrate the database to this version's schema")
    _common(up)
    up.set_defaults(run=_db_upgrade)
    return parser


def _run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        "task": args.task,
        "algorithm": args.algorithm,
        "rounds": args.rounds,
        "cohort": args.cohort,
        "min_clients": args.min_clients,
        "local_steps": args.local_steps,
        "lr": args.lr,
    }
    from coordinator.server import Coordinator, ServeOptions  # torch and gRPC: only to serve

    config = load_config(args.config, overrides)
    if not (args.db_wait >= 0 and math.isfinite(args.db_wait)):
        raise CoordinatorError(
            ErrorCode.INVALID_ARGUMENT, f"--db-wait must be >= 0 seconds, got {args.db_wait:g}"
        )
    db_url = service_database_url(args.data_dir, args.db)
    options = ServeOptions(
        data_dir=args.data_dir,
        listen=args.listen,
        enroll_listen=args.enroll_listen,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host or _host_of(args.listen),
        db_url=db_url,
        insecure=args.insecure,
        server_names=tuple(args.server_name),
        standby_timeout=args.standby_timeout,
        db_wait=args.db_wait,
    )
    if args.standby_timeout is not None and not args.standby_timeout >= 0:
        raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, "--standby-timeout must be >= 0")
    if args.insecure:
        print(
            "WARNING: --insecure turns TLS off. Anyone who can reach the port can read and "
            "forge traffic. Use it on loopback for development only.",
            file=sys.stderr,
        )
    # 0, or 3 (--standby-timeout ran out) or 4 (the leader lock was lost): coordinator/leader.py
    try:
        return asyncio.run(Coordinator(config, options).run_until_signal())
    except StoreError as exc:
        raise explain_unavailable(exc, db_url) from exc


def _token_create(args: argparse.Namespace) -> int:
    ttl = parse_ttl(args.ttl) if args.ttl else DEFAULT_TTL
    if not 1 <= args.count <= 10_000:
        raise CoordinatorError(ErrorCode.INVALID_ARGUMENT, "--count must be 1 to 10000")
    store = _admin_store(args)
    tokens = [new_token() for _ in range(args.count)]
    now = datetime.now(UTC)
    try:
        for token in tokens:
            store.create_token(
                EnrollmentToken(token_hash=hash_token(token), created_at=now, expires_at=now + ttl)
            )
    finally:
        store.close()
    print("\n".join(tokens))
    print(f"expires {(now + ttl).isoformat(timespec='seconds')}", file=sys.stderr)
    return 0


def _clients_list(args: argparse.Namespace) -> int:
    store = _admin_store(args)
    try:
        clients = store.list_clients()
    finally:
        store.close()
    rows = [
        {
            "client_id": c.client_id,
            "label": c.label,
            "enrolled_at": c.enrolled_at.isoformat(timespec="seconds"),
            "revoked_at": c.revoked_at.isoformat(timespec="seconds") if c.revoked_at else None,
            "identity_key": c.identity_key.hex(),
        }
        for c in clients
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':>6}  {'enrolled':25}  {'revoked':25}  label")
    for row in rows:
        revoked = row["revoked_at"] or "-"
        print(f"{row['client_id']:>6}  {row['enrolled_at']:25}  {revoked:25}  {row['label']}")
    return 0


def _clients_revoke(args: argparse.Namespace) -> int:
    store = _admin_store(args)
    try:
        client = store.revoke_client(args.client_id, now=datetime.now(UTC))
    finally:
        store.close()
    # A running coordinator reads the revoked ids at most this long ago (coordinator.auth):
    # once it has passed, the client's next RPC is refused by every coordinator.
    time.sleep(REVOCATION_REFRESH + 0.1)
    print(f"client {client.client_id} revoked at {client.revoked_at}")
    return 0


def _status(args: argparse.Namespace) -> int:
    store = _admin_store(args)
    try:
        report = status_report(store, limit=args.limit)
    finally:
        store.close()
    print(json.dumps(report, indent=2) if args.json else format_status(report))
    return 0


def _export(args: argparse.Namespace) -> int:
    require_data_dir(args.data_dir)  # the model's tensors are in DIR/blobs
    store = _admin_store(args)
    try:
        version = export_version(
            store, data_dir=args.data_dir, version=args.version, task=args.task, out=args.out
        )
    finally:
        store.close()
    print(f"model version {version} written to {args.out}")
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    url = admin_database_url(args.data_dir, args.db)  # an existing database, never a new one
    try:
        before = current_revision(url)
        after = upgrade(url)
    except StoreError as exc:
        raise explain_unavailable(exc, url) from exc
    if before == after:
        print(f"the database is already at revision {after}")
    else:
        print(f"migrated the database from {before or 'empty'} to {after} (head {head_revision()})")
    return 0


def _admin_store(args: argparse.Namespace) -> Store:
    """The store of the database the data directory records (or ``--db``); creates nothing."""
    url = admin_database_url(args.data_dir, args.db)
    try:
        return open_store(args.data_dir, url)
    except StoreError as exc:
        raise explain_unavailable(exc, url) from exc


def _host_of(address: str) -> str:
    """The host of ``HOST:PORT`` (``[::1]:7070`` gives ``::1``)."""
    host, _, _ = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0"


def _version_list(args: argparse.Namespace) -> int:
    store = _admin_store(args)
    try:
        versions = versions_report(store)
    finally:
        store.close()
    print(json.dumps(versions, indent=2) if args.json else format_versions(versions))
    return 0


def _version_pin(args: argparse.Namespace) -> int:
    store = _admin_store(args)
    try:
        set_pin(store, args.number, pinned=True, why="version pin")
    finally:
        store.close()
    print(f"model version {args.number} pinned: its blobs are kept until `version unpin`")
    return 0


def _version_unpin(args: argparse.Namespace) -> int:
    store = _admin_store(args)
    try:
        version = set_pin(store, args.number, pinned=False, why="version unpin")
    finally:
        store.close()
    print(
        f"model version {args.number} unpinned"
        + ("" if version.retained else " (its blobs were already deleted)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
