"""The FP8 Triton kernels (FP8 GEMV, per-token quantization) checked on CPU under the Triton
interpreter, with the GPU's rounding of casts (tests/triton_cpu.py): the cases of
tests/fp8_kernel_cases.py at small shapes, in a subprocess (the interpreter is chosen when the
kernels are defined, so it needs its own process)."""

import pytest

from tests.triton_cpu import run_in_interpreter


def test_fp8_kernels_under_the_triton_interpreter():
    pytest.importorskip("triton")
    done = run_in_interpreter("tests.fp8_kernel_cases")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fp8 kernel cases: ok" in done.stdout
