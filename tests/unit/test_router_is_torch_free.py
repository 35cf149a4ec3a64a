"""The router runs in a slim image without torch or NIXL: importing and building it must not
need them (docker/router-requirements.txt lists what it does need)."""

import subprocess
import sys

CODE = """
import sys
sys.modules['torch'] = None  # any 'import torch' now raises ImportError
sys.modules['nixl_cu12'] = None
import deploy.cli
from router.app import create_app
from router.config import RouterConfig
app = create_app(RouterConfig(model=sys.argv[1]))
print('ok', sorted(r.path for r in app.app.routes if r.path.startswith('/v1')))
"""


def test_router_builds_without_torch(demo_model_dir):
    out = subprocess.run([sys.executable, "-c", CODE, str(demo_model_dir)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "/v1/chat/completions" in out.stdout and "/v1/completions" in out.stdout
