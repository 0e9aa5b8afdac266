"""Regenerate the Python code for ``proto/`` into ``wire/v1/``.

    python scripts/gen_proto.py            # write the generated files
    python scripts/gen_proto.py --out DIR  # write them under DIR instead (the freshness test)

The contract keeps its proto package and path, ``fedadamw.v1`` in ``proto/fedadamw/v1/``; the
Python code goes to the wire package (``wire.v1``), which both sides import, so the imports
protoc writes are rewritten from ``fedadamw.v1`` to ``wire.v1``. The generated modules, their
type stubs and the gRPC stubs are committed; a test fails when they differ from what this
script produces.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_PACKAGE = Path("fedadamw") / "v1"  # where the .proto files are, under proto/
PACKAGE = Path("wire") / "v1"  # where their Python code goes


def generate(out: Path) -> list[Path]:
    """Generate every ``proto/fedadamw/v1/*.proto`` into ``out/wire/v1``; return the files."""
    sources = sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PROTO_PACKAGE}")
    target = out / PACKAGE
    target.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(str(s.relative_to(PROTO_ROOT)) for s in sources),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for generated in sorted((Path(scratch) / PROTO_PACKAGE).iterdir()):
            if generated.suffix in {".py", ".pyi"}:
                text = generated.read_text().replace(
                    "from fedadamw.v1 import", "from wire.v1 import"
                )
                (target / generated.name).write_text(text)
    (target / "__init__.py").write_text(
        '"""Generated from proto/fedadamw/v1 by scripts/gen_proto.py: do not edit."""\n'
    )
    return sorted(p for p in target.iterdir() if p.suffix in {".py", ".pyi"})


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write wire/v1 under")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
