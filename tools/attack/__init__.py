"""Attacks on a local grid, to check the transport's defences (see docs/TRANSPORT.md "Floods")."""
