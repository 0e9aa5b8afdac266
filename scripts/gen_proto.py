"""Regenerate the Python code for ``proto/`` into ``fedadamw/v1/``.

    python scripts/gen_proto.py            # write the generated files
    python scripts/gen_proto.py --out DIR  # write them under DIR instead (the freshness test)

The generated modules, their type stubs and the gRPC stubs are committed; a test fails when
they differ from what this script produces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = Path("fedadamw") / "v1"


def generate(out: Path) -> list[Path]:
    """Generate every ``proto/fedadamw/v1/*.proto`` under ``out``; return the files written."""
    sources = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE}")
    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s.relative_to(PROTO_ROOT)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out / PACKAGE / "__init__.py"
    init.write_text(
        '"""Generated from proto/fedadamw/v1 by scripts/gen_proto.py: do not edit."""\n'
    )
    return sorted(p for p in (out / PACKAGE).iterdir() if p.suffix in {".py", ".pyi"})


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write fedadamw/v1 under")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
