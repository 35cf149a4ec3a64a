"""Build hook: generate the gRPC stubs (proto/pdserve_pb2*.py) while building, so wheels and
sdists carry them and an installed pdserve never runs protoc. All other metadata lives in
pyproject.toml. A source checkout (editable install, fresh clone) still regenerates them on
import when they are missing or stale (proto/__init__.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
PROTO = Path("proto") / "pdserve.proto"
STUBS = ("pdserve_pb2.py", "pdserve_pb2_grpc.py")


def generate_stubs(out_dir: Path) -> None:
    """protoc (grpcio-tools, a build requirement) from the source .proto into out_dir/proto."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={tmp}",
               f"--grpc_python_out={tmp}", str(ROOT / PROTO)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"protoc failed on {PROTO}: {result.stderr.strip()}")
        (out_dir / "proto").mkdir(parents=True, exist_ok=True)
        for name in STUBS:
            shutil.copyfile(Path(tmp) / "proto" / name, out_dir / "proto" / name)


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # editable installs generate them in place on import
            generate_stubs(Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        stubs = [str(Path(self.build_lib) / "proto" / name) for name in STUBS]
        return outputs + [s for s in stubs if s not in outputs]


class SdistWithStubs(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        generate_stubs(Path(base_dir))


setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithStubs})
