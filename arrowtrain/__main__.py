"""python -m arrowtrain ... is the `arrowtrain` command."""

import sys

from arrowtrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
