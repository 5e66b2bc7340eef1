"""Command line: `python -m tools.checker --help` (from the repository root)."""

from tools.checker.cli import main

raise SystemExit(main())
