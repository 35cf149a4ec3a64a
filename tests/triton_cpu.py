"""Running Triton kernels on CPU (``TRITON_INTERPRET=1``) with the casts the GPU does.

Triton 3.9's interpreter narrows floats by hand and gets it wrong: fp32 -> bf16 truncates, and
fp32 -> e4m3 rounds up without carrying into the exponent (125.6 becomes 64, not 128). The GPU
rounds to nearest even (``cvt.rn``), as torch's casts do, so ``use_torch_casts`` routes the
interpreter's float conversions between the dtypes torch has through torch: a kernel checked
here is then checked bit for bit against what it computes on an H100/H200.

The process must have ``TRITON_INTERPRET=1`` before the kernels' modules are imported (the
interpreter is chosen when ``@triton.jit`` runs), hence ``run_in_interpreter``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch


def use_torch_casts() -> None:
    import triton.language as tl
    from triton.runtime import interpreter

    dtypes = {tl.float32: torch.float32, tl.bfloat16: torch.bfloat16, tl.float16: torch.float16,
              tl.float8e4nv: torch.float8_e4m3fn, tl.float8e5: torch.float8_e5m2}
    ints = {32: (np.int32, torch.int32), 16: (np.int16, torch.int16), 8: (np.int8, torch.int8)}
    hand_made = interpreter._convert_float

    def convert(data, src, dst, rounding_mode):
        if src not in dtypes or dst not in dtypes or rounding_mode not in (
                None, interpreter._ir.ROUNDING_MODE.RTNE):
            return hand_made(data, src, dst, rounding_mode)
        np_in, _ = ints[src.primitive_bitwidth]
        np_out, torch_out = ints[dst.primitive_bitwidth]
        bits = torch.from_numpy(np.ascontiguousarray(data).view(np_in).copy())
        out = bits.view(dtypes[src]).to(dtypes[dst]).view(torch_out).numpy()
        return out.view(getattr(np, f"uint{dst.primitive_bitwidth}")).reshape(data.shape)

    interpreter._convert_float = convert


def run_in_interpreter(module: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """``python -m module`` on CPU under the Triton interpreter (its ``__main__`` runs the cases
    after ``use_torch_casts``); the caller asserts on the return code."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", module], env=env, capture_output=True,
                          text=True, timeout=timeout_s)
