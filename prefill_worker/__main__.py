"""`python -m prefill_worker`: the same command as `pdserve prefill`."""
import sys

from prefill_worker.cli import main

sys.exit(main())
