"""pluto's product layer: FUSE driver, volume engine, local cache, CLI."""
