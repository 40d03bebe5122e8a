"""`python -m evalkit`: see evalkit.cli (or `python -m evalkit --help`)."""

import sys

from evalkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
