"""The wire contract. Stubs are generated from ``pdserve.proto`` by grpcio-tools, never edited
by hand: the package build generates them, and importing this package regenerates them when
they are missing or older than the .proto (editable installs, fresh clones).

    from proto import pb, pb_grpc
"""

from __future__ import annotations

import importlib
from pathlib import Path

API_VERSION = 1  # bump only with a new set of messages; workers answer older ones explicitly

_HERE = Path(__file__).resolve().parent
_PROTO = _HERE / "pdserve.proto"
_OUTPUTS = [_HERE / "pdserve_pb2.py", _HERE / "pdserve_pb2_grpc.py"]


def generate_stubs(force: bool = False) -> None:
    """Run protoc (from grpcio-tools) if the stubs are missing or stale."""
    stale = force or any(
        not out.exists() or out.stat().st_mtime < _PROTO.stat().st_mtime for out in _OUTPUTS
    )
    if not stale:
        return
    from grpc_tools import protoc

    root = _HERE.parent
    args = ["grpc_tools.protoc", f"-I{root}", f"--python_out={root}",
            f"--grpc_python_out={root}", str(_PROTO.relative_to(root))]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {_PROTO}")


generate_stubs()
pb = importlib.import_module("proto.pdserve_pb2")
pb_grpc = importlib.import_module("proto.pdserve_pb2_grpc")
