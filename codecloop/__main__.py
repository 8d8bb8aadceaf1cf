"""`python -m codecloop ...`: the same command line as the `codecloop` script."""

import sys

from codecloop.launch.cli import main

if __name__ == "__main__":
    sys.exit(main())
