"""trio networking for pluto (docs/ARCHITECTURE.md): protocol (Noise channels, CBOR RPC),
peer (the storage peer and its client), coordinator (registry, directory, mailboxes, client)."""
