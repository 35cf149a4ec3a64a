import sys

from deploy.cli import main

sys.exit(main(["router", *sys.argv[1:]]))
