"""What a ``--model`` spec names, resolved the same way by every process (torch-free).

A spec is ``demo`` (SmolLM2-135M-Instruct, prepared into the cache on first use),
``random:<shape>`` (random weights of a named shape), a HF-style directory or a ``.gguf`` file.
The router only needs the names and where the tokenizer lives; the engine
(``engine/model/loaders/source.py``) also prepares the demo, checks the files and loads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEMO_SPEC = "demo"
DEMO_NAME = "smollm2-135m-instruct"
RANDOM_PREFIX = "random:"
DEMO_COMPLETE_MARKER = ".complete"  # written last by the preparation: the directory is whole


def demo_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / DEMO_NAME


def is_demo_prepared(cache_dir: Path) -> bool:
    return (demo_model_dir(cache_dir) / DEMO_COMPLETE_MARKER).exists()


@dataclass(frozen=True)
class ModelRef:
    kind: str  # "hf_dir" | "gguf" | "random"
    location: str  # directory, file, or shape name
    name: str  # what /v1/models reports
    aliases: tuple[str, ...] = ()  # further names clients may send (e.g. "demo")
    is_demo: bool = False  # location is the demo directory, which may still need preparing

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]

    def describe(self) -> str:
        return f"{self.kind}:{self.location}"


def parse_model_spec(spec: str, cache_dir: Path) -> ModelRef:
    """Name what ``spec`` refers to, without touching its files (the router may run where
    the weights are not); ``check_model_files`` says whether they are there."""
    if spec == DEMO_SPEC:
        return ModelRef("hf_dir", str(demo_model_dir(cache_dir)), DEMO_NAME, (DEMO_SPEC,),
                        is_demo=True)
    if spec.startswith(RANDOM_PREFIX):
        return ModelRef("random", spec.removeprefix(RANDOM_PREFIX), spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and not path.is_dir():
        return ModelRef("gguf", str(path), path.stem)
    return ModelRef("hf_dir", str(path), path.name)


def check_model_files(ref: ModelRef, spec: str) -> None:
    """Raise ValueError, naming the accepted forms, when a file-backed model is missing."""
    path = Path(ref.location)
    if ref.kind == "gguf" and path.is_file():
        return
    if ref.kind == "hf_dir" and path.is_dir() and (path / "config.json").exists():
        return
    if ref.kind == "random":
        return
    raise ValueError(
        f"cannot find model {spec!r}: give 'demo', 'random:<shape>', a directory with "
        f"config.json and *.safetensors, or a .gguf file"
    )
