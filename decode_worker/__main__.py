"""`python -m decode_worker`: the same command as `pdserve decode`."""
import sys

from decode_worker.cli import main

sys.exit(main())
