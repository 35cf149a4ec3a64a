"""The wire contract. Stubs are generated from ``pdserve.proto`` by grpcio-tools, never edited
by hand: the package build generates them, and importing this package regenerates them when
they are missing or older than the .proto (editable installs, fresh clones).

    from proto import pb, pb_grpc
"""

from __future__ import annotations

import importlib
from pathlib import Path

# Bump only with a new set of messages; workers answer older ones explicitly. 2: DecodeRequest
# names where the prompt's KV comes from in a oneof (pull_kv | prefill_here), replacing v1's
# prefill_locally bool and loose first_token / first_logprob / kv_handle fields. 3: decode
# outputs travel as per-step batches on one Outputs stream per router (Submit + Outputs
# replace the per-request Decode stream and its DecodeChunk).
API_VERSION = 3

_HERE = Path(__file__).resolve().parent
_PROTO = _HERE / "pdserve.proto"
_OUTPUTS = [_HERE / "pdserve_pb2.py", _HERE / "pdserve_pb2_grpc.py"]


def generate_stubs(force: bool = False) -> None:
    """Run protoc (from grpcio-tools) if the stubs are missing or stale.

    protoc runs in a subprocess (in-process it can crash a Python that already loaded torch)
    under a file lock, writing to a temporary directory first, so processes starting together
    in a fresh checkout never see half-written stubs.
    """
    if not force and not _stale():
        return
    import fcntl
    import shutil
    import subprocess
    import sys
    import tempfile

    root = _HERE.parent
    with open(_HERE / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and not _stale():
            return  # another process generated them while we waited
        with tempfile.TemporaryDirectory(dir=_HERE) as tmp:
            cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{root}", f"--python_out={tmp}",
                   f"--grpc_python_out={tmp}", str(_PROTO.relative_to(root))]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"protoc failed on {_PROTO}: {result.stderr.strip()}")
            for out in _OUTPUTS:
                shutil.move(str(Path(tmp) / "proto" / out.name), out)


def _stale() -> bool:
    if not _PROTO.exists():  # an installed wheel: it ships the stubs its build generated
        return False
    return any(not out.exists() or out.stat().st_mtime < _PROTO.stat().st_mtime
               for out in _OUTPUTS)


generate_stubs()
pb = importlib.import_module("proto.pdserve_pb2")
pb_grpc = importlib.import_module("proto.pdserve_pb2_grpc")
