"""`python -m streaming`: inspect, verify and convert MDS datasets (see `streaming.cli`)."""

import sys

from streaming.cli import main

sys.exit(main())
