"""Command line: `python -m tools.simulate --help` (from the repository root)."""

from tools.simulate.cli import main

raise SystemExit(main())
