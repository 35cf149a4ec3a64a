"""The decode-time MoE kernels (Triton routing, the batch-1 expert GEMVs, RoPE with Qwen3's
q/k norms) checked on CPU under the Triton interpreter, with the GPU's rounding of casts
(tests/triton_cpu.py): the cases of tests/moe_kernel_cases.py at small shapes, in a
subprocess (the interpreter is chosen when the kernels are defined)."""

import pytest

from tests.triton_cpu import run_in_interpreter


def test_moe_kernels_under_the_triton_interpreter():
    pytest.importorskip("triton")
    done = run_in_interpreter("tests.moe_kernel_cases")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "moe kernel cases: ok" in done.stdout
