"""Generate app/grpc_v2's protobuf and gRPC modules from app/grpc_v2/grpc_predict_v2.proto.

    pip install "grpcio-tools==1.81.1" "protobuf>=6.33.5,<7"
    python scripts/gen_grpc.py            # rewrite the generated modules
    python scripts/gen_grpc.py --check    # exit 1 when they differ from what would be written

The generated modules are committed, so the service needs only grpcio and protobuf at run
time, never grpcio-tools. The tools' version fixes the oldest runtime the modules accept
(the protobuf "gencode" version and GRPC_GENERATED_VERSION inside them): keep pyproject's
and requirements/runtime-*.in's lower bounds of grpcio and protobuf at or above it.

One change is made to protoc's output: the messages are built in a descriptor pool of their
own instead of protobuf's default pool. The protocol fixes the package name (`inference`), so
every v2 client (tritonclient.grpc, KServe's) registers the same message names in the default
pool, and a process importing both would fail with "duplicate symbol" at import.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = Path("app/grpc_v2/grpc_predict_v2.proto")
OUTPUTS = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = (
    "# segserve (scripts/gen_grpc.py): a pool of its own, so that v2 clients' identically\n"
    "# named messages (package `inference`) can be imported in the same process.\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def generate() -> dict[str, str]:
    """The generated modules' text by file name."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [
                sys.executable, "-m", "grpc_tools.protoc", "-I", ".",
                f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
                str(PROTO),
            ],
            cwd=ROOT,
            check=True,
        )  # fmt: skip
        texts = {name: (Path(out) / PROTO.parent / name).read_text() for name in OUTPUTS}
    pb2 = texts["grpc_predict_v2_pb2.py"]
    if pb2.count(DEFAULT_POOL) != 1:
        raise SystemExit("protoc's output changed: no single default-pool registration found")
    texts["grpc_predict_v2_pb2.py"] = pb2.replace(DEFAULT_POOL, OWN_POOL)
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    texts = generate()
    target = ROOT / PROTO.parent
    stale = [n for n, text in texts.items() if not (target / n).is_file()
             or (target / n).read_text() != text]  # fmt: skip
    if args.check:
        for name in stale:
            print(f"{PROTO.parent / name} differs from what {PROTO} generates", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        (target / name).write_text(texts[name])
        print(f"wrote {PROTO.parent / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
