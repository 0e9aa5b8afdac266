"""The retention policy end to end (docs/architecture.md, section 5).

A coordinator that keeps two model versions runs five rounds with three ``fedadamw-edge``
processes; version 0 was exported (which pins it) before they started. Afterwards the blob
directory holds the blobs of the pinned version and of the newest two only; the released
versions stay in ``status`` and cannot be exported or pinned, every round is still listed,
and each agent's cache holds only its last round's blobs. Then the coordinator is killed as
if between the two steps of a pass (the database released a version, its blobs are still on
disk, and a commit left an orphan blob behind); the pass at its next start, now with
``keep_rounds = 2``, removes exactly those, and the three oldest rounds with the released
versions they made. The store contract suite runs the same policy on PostgreSQL.
"""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import torch

from coordinator.blobs import BlobStore
from coordinator.status import format_status
from coordinator.store.sql import SqlStore, default_sqlite_url
from fedadamw.tasks.models import DigitsCNN

from .harness import FAST, AgentProcess, Coordinator, merged, write_config

ROUNDS = 5
SETTINGS = merged(
    FAST, rounds=ROUNDS, cohort=3, min_clients=3, local_steps=2, retention={"keep_versions": 2}
)


def _store(coordinator: Coordinator) -> SqlStore:
    return SqlStore(coordinator.db_url or default_sqlite_url(coordinator.data_dir))


def _retained_blobs(coordinator: Coordinator) -> tuple[dict[int, bool], frozenset[str]]:
    """Each version's retained flag, and the blobs the retained ones name (from the store)."""
    store = _store(coordinator)
    try:
        versions = store.list_versions()
        return {v.version: v.retained for v in versions}, store.retained_blobs()
    finally:
        store.close()


def _on_disk(coordinator: Coordinator) -> set[str]:
    return set(BlobStore(coordinator.data_dir / "blobs").names())


def _wait_blobs(coordinator: Coordinator, want: frozenset[str], timeout: float = 30) -> None:
    """Until the blob directory holds exactly ``want`` (a pass runs after the commit)."""
    deadline = time.monotonic() + timeout
    while _on_disk(coordinator) != want:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"blobs {sorted(_on_disk(coordinator))} != {sorted(want)}\n"
                f"{coordinator.log()[-3000:]}"
            )
        time.sleep(0.2)


def _metric(coordinator: Coordinator, name: str) -> float | None:
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def _wait_metric(coordinator: Coordinator, name: str, want: float, timeout: float = 15) -> None:
    """Until the gauge ``name`` reads ``want`` (the listener sets it after the pass)."""
    deadline = time.monotonic() + timeout
    while (value := _metric(coordinator, name)) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is {value}, not {want}")
        time.sleep(0.2)


def test_only_kept_and_pinned_versions_keep_their_blobs(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, SETTINGS)
    coordinator.start()
    exported = tmp_path / "v0.pt"
    with ThreadPoolExecutor(3) as pool:  # the export pins version 0 while agents enroll
        export = pool.submit(
            coordinator.cli,
            "export",
            "--version",
            "0",
            "--task",
            "digits-cnn",
            "--out",
            str(exported),
        )
        agents = [AgentProcess(coordinator, tmp_path, i, 3) for i in range(3)]
        enrolled = pool.map(AgentProcess.enroll, agents, coordinator.tokens(3))
        assert [e.returncode for e in enrolled] == [0, 0, 0]
        assert "model version 0 written" in export.result().stdout
    try:
        for agent in agents:
            agent.start()
        coordinator.wait_for(lambda s: s["model_version"] == ROUNDS, timeout=180)
        retained, wanted = _retained_blobs(coordinator)
        assert retained == {0: True, 1: False, 2: False, 3: False, 4: True, 5: True}
        _wait_blobs(coordinator, wanted)
        _wait_metric(coordinator, "fedadamw_retained_model_versions", 3)
        _wait_metric(
            coordinator,
            "fedadamw_blob_store_bytes",
            sum((coordinator.data_dir / "blobs" / sha[:2] / sha).stat().st_size for sha in wanted),
        )
    finally:
        codes = [agent.stop() for agent in agents]
    assert codes == [0, 0, 0]

    # status still lists every version and every round
    status = coordinator.status()
    assert [(v["version"], v["retained"], v["pinned"]) for v in status["versions"]] == [
        (0, True, True),
        (1, False, False),
        (2, False, False),
        (3, False, False),
        (4, True, False),
        (5, True, False),
    ]
    history = [(r["round"], r["committed_version"]) for r in status["rounds"]]  # newest first
    committed = [r["committed_version"] for r in status["rounds"] if r["outcome"] == "committed"]
    assert sorted(committed) == [1, 2, 3, 4, 5]
    store = _store(coordinator)
    try:
        assert len(status["rounds"]) == len(store.list_rounds())
        last = store.get_version(4)  # what the last round trained from
    finally:
        store.close()
    text = format_status(status)  # what `status` prints
    assert "versions kept: 0, 4, 5 (pinned: 0); 3 released by the retention policy" in text

    # each agent's cache holds the blobs of its last round only
    for agent in agents:
        cached = {p.name for p in (agent.state / "cache").iterdir()}
        assert cached == last.blob_hashes, agent.log()[-2000:]

    # the exported version survived and exports again; a released one says why it cannot
    again = tmp_path / "v0-again.pt"
    coordinator.cli("export", "--version", "0", "--out", str(again))
    model = DigitsCNN()
    model.load_state_dict(torch.load(again))
    assert all(
        torch.equal(a, b)
        for a, b in zip(torch.load(exported).values(), torch.load(again).values(), strict=True)
    )
    for args in (
        ("export", "--version", "2", "--out", str(tmp_path / "v2.pt")),
        ("version", "pin", "2"),
    ):
        refused = coordinator.cli(*args, check=False)
        assert refused.returncode == 2, refused
        assert "model version 2 was not retained" in refused.stderr
    assert not (tmp_path / "v2.pt").exists()

    # A crash between a pass's two steps: the database released version 0 (unpinned), its
    # blobs are still on disk, and a commit cut short left a blob no version names.
    assert "model version 0 unpinned" in coordinator.cli("version", "unpin", "0").stdout
    coordinator.kill()
    store = _store(coordinator)
    try:
        (released,) = store.retire_versions(keep=2, now=datetime.now(UTC))
    finally:
        store.close()
    assert released.version == 0
    orphan = BlobStore(coordinator.data_dir / "blobs").put(b"a version that never committed")
    retained, wanted = _retained_blobs(coordinator)
    assert retained == {0: False, 1: False, 2: False, 3: False, 4: True, 5: True}
    assert _on_disk(coordinator) - wanted == {orphan} | (released.blob_hashes - wanted)
    # The restart also bounds the round history to the newest two rounds.
    write_config(coordinator.config, merged(SETTINGS, retention={"keep_rounds": 2}))
    coordinator.start()
    try:
        _wait_blobs(coordinator, wanted)  # the start-up pass removed the orphans, no more
        _wait_metric(coordinator, "fedadamw_retained_model_versions", 2)
        # all but the two newest rounds went, with the released versions they made; the
        # retained versions 4 and 5 stay, and version 0, which no round made
        kept = {0: False, 4: True, 5: True}
        kept |= {v: False for _, v in history[:2] if v is not None and v < 4}
        assert _retained_blobs(coordinator) == (kept, wanted)
    finally:
        coordinator.stop()
    log = coordinator.log()
    assert "retention: released model versions none, deleted" in log
    assert f"retention: deleted {len(history) - 2} ended rounds from the history" in log
    status = coordinator.status()
    assert [(r["round"], r["committed_version"]) for r in status["rounds"]] == history[:2]
    assert [v["version"] for v in status["versions"]] == sorted(kept)
    out = str(tmp_path / "v2.pt")
    gone = coordinator.cli("export", "--version", "2", "--out", out, check=False)
    assert gone.returncode == 2, gone
    assert "no model version 2" in gone.stderr
