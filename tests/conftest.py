"""Shared fixtures. Tests use the real demo model, real processes and real servers; nothing
here fakes a component except where a GPU would be needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Every component the tests start authenticates with this session's cluster secret: the
# variable reaches each child process, and tests/cluster_helpers.py locks Redis with it.
os.environ.setdefault("PDSERVE_CLUSTER_SECRET", "test-" + os.urandom(16).hex())


def pytest_collection_modifyitems(config, items):
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    from engine.config import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def demo_model_dir(cache_dir: Path) -> Path:
    """The real demo model (SmolLM2-135M-Instruct), prepared once into the cache."""
    from engine.model.loaders.demo_model import prepare_demo_model

    return prepare_demo_model(cache_dir)


@pytest.fixture(scope="session")
def redis_server():
    """A real Redis for the session's tests (see tests/cluster_helpers.py)."""
    from tests.cluster_helpers import RedisServer

    server = RedisServer()
    yield server
    server.stop()
