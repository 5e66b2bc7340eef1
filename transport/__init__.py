"""trio networking for pluto: Noise channels, CBOR RPC, storage peer, coordinator."""
