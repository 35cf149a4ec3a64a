import sys

from deploy.cli import main

sys.exit(main(["prefill", *sys.argv[1:]]))
