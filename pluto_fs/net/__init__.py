"""Talking to many peers: the peer list, where slots live, quorums and concurrent calls."""
