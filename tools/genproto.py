"""Generate the Python stubs of protos/ into a folder: ``python tools/genproto.py generated``.

Writes ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` with grpcio-tools' bundled protoc, plus
an empty ``__init__.py`` in every package folder so the stubs install as regular packages. The
output depends only on protos/ and the grpcio-tools version pinned in pyproject.toml, so
``make proto-check`` can compare a fresh run with the committed copy byte for byte.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def main(out: Path) -> int:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    for stub in out.rglob("*_pb2.py"):
        folder = stub.parent
        while folder != out:
            (folder / "__init__.py").touch()
            folder = folder.parent
    return 0


if __name__ == "__main__":
    sys.exit(main(ROOT / sys.argv[1] if len(sys.argv) > 1 else ROOT / "generated"))
