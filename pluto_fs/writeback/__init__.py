"""The mount's engine: the in-memory tree, the write-back journal, publishing and merging folders."""
