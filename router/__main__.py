"""`python -m router`: the same command as `pdserve router`."""
import sys

from router.cli import main

sys.exit(main())
