"""The wire protocol: Noise channels, CBOR RPC, listeners, dialling and connection pools."""
