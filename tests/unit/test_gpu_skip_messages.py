"""Without a GPU, the GPU tests skip saying only what is missing."""

import subprocess
import sys

import pytest

from tests.cluster_helpers import ROOT

torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_gpu_tests_skip_with_what_is_missing():
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "tests/gpu"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    reasons = {line.split(": ", 1)[1] for line in run.stdout.splitlines()
               if line.startswith("SKIPPED")}
    assert "needs a CUDA GPU" in reasons, run.stdout
    assert reasons <= {"needs a CUDA GPU", "needs two CUDA GPUs"}, run.stdout
