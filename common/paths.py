"""Where pdserve keeps files (torch-free: the router uses it too)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Where prepared models live: $PDSERVE_CACHE_DIR, else $XDG_CACHE_HOME/pdserve."""
    if os.environ.get("PDSERVE_CACHE_DIR"):
        return Path(os.environ["PDSERVE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pdserve"
