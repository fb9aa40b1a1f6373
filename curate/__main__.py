"""`python -m curate ...` is the `curate` command."""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main())
