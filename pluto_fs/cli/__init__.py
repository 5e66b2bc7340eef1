"""The `pluto` command line: one module per group of commands."""
