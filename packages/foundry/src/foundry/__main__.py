"""`python -m foundry ...`: the same as the `foundry` command."""

from foundry.cli import main

raise SystemExit(main())
