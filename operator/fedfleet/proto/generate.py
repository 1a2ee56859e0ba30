"""Regenerate the Python code of fedfleet's .proto files with grpcio-tools.

    python -m fedfleet.proto.generate            # rewrite the committed files in place (`make proto`)
    python -m fedfleet.proto.generate --out DIR  # write them under DIR instead (the staleness test)

Paths are given relative to the `operator/` source root so the generated imports read `fedfleet.proto.v1...`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # operator/
PROTOS: tuple[str, ...] = ("fedfleet/proto/v1/aggregator.proto", "fedfleet/proto/v1/gateway.proto")
SUFFIXES: tuple[str, ...] = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_files(proto: str) -> list[str]:
    """The files protoc writes for one .proto, relative to the output root."""
    stem = proto.removesuffix(".proto")
    return [stem + suffix for suffix in SUFFIXES]


def generate(out_dir: Path = SOURCE_ROOT) -> list[Path]:
    """Run protoc on every .proto; returns the files written. Raises RuntimeError if protoc fails."""
    from grpc_tools import protoc  # a development dependency: only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    for proto in PROTOS:
        args = [
            "grpc_tools.protoc",
            f"-I{SOURCE_ROOT}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--pyi_out={out_dir}",
            str(SOURCE_ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    return [out_dir / name for proto in PROTOS for name in generated_files(proto)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedfleet.proto.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SOURCE_ROOT, help="output root (default: the source tree)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
