"""The storage peer: its service, its on-disk store, and the client that talks to it."""
