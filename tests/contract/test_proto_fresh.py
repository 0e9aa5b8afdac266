"""The generated code under wire/v1 is what scripts/gen_proto.py makes from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "wire" / "v1").iterdir() if p.is_file()}
    committed = {
        p.name: p.read_bytes()
        for p in (ROOT / "wire" / "v1").iterdir()
        if p.is_file() and p.suffix in {".py", ".pyi"}
    }
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"regenerate with `python scripts/gen_proto.py`: {stale} are stale"


def test_the_service_and_its_messages_load() -> None:
    from wire.v1 import edge_pb2, edge_pb2_grpc

    names = {m.name for m in edge_pb2.DESCRIPTOR.services_by_name["EdgeService"].methods}
    assert {"Enroll", "CheckIn", "WatchRound", "UploadMaskedInput", "Unmask"} <= names
    assert hasattr(edge_pb2_grpc, "EdgeServiceStub")
    # every round-scoped request names its round and phase
    for message in (
        "AdvertiseKeysRequest",
        "ShareKeysRequest",
        "MaskedInputChunk",
        "UnmaskRequest",
    ):
        fields = edge_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name
        assert "round_id" in fields
        assert "phase" in fields
