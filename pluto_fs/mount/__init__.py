"""The mount process: FUSE operations, their error policy, and the loops that run beside them."""
