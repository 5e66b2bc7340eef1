"""Hard bounds on everything a remote party can make us hold or wait for.

Every number a hostile peer could inflate is capped here, in one place, so a
reviewer can see the worst case a connection costs.

Worst case of one listening server (the "peer budget", docs/TRANSPORT.md
"Floods"): `BUFFERED_BYTES_MAX` of received bytes held for unfinished
messages across every connection, plus under one Noise frame of ciphertext
per connection outside that figure, plus per-connection bookkeeping — about
128 MiB + (HANDSHAKES_MAX + CONNECTIONS_MAX) × 96 KiB ≈ 190 MiB, under
`PEER_MEMORY_BUDGET`.
"""

from dataclasses import dataclass

NOISE_FRAME_MAX = 65535  # the Noise spec's limit on one transport message
FRAME_PLAINTEXT_MAX = NOISE_FRAME_MAX - 16  # minus the ChaChaPoly tag
MESSAGE_MAX = 4 * 1024 * 1024 + 64 * 1024  # one CBOR message: a full slot plus headroom
STREAM_CHUNK = 256 * 1024  # data piece of a streamed fragment
FRAGMENT_MAX = 64 * 1024 * 1024  # largest fragment a peer accepts
CONCURRENT_REQUESTS_MAX = 64  # in flight per connection, each direction
CONNECTIONS_MAX = 512  # established connections per listening server
CONNECTIONS_PER_IP_MAX = 256  # one address may hold half the pool, never all of it
CONNECTIONS_PER_KEY_MAX = 32  # one peer key (a device) needs one or two
HANDSHAKES_MAX = 64  # handshakes in progress per listening server (the handshake slot pool)
HANDSHAKES_PER_IP_MAX = 32  # one address's share of the handshake slots
HANDSHAKE_TIMEOUT = 10.0  # seconds for the whole Noise handshake
REQUEST_TIMEOUT = 30.0  # default wait for a response
STREAM_IDLE_TIMEOUT = 30.0  # longest gap between two pieces of a stream
IDLE_CONNECTION_TIMEOUT = 600.0  # server closes a connection silent this long
MESSAGE_GRACE = 10.0  # seconds any started message may take, on top of its size at the minimum rate
MESSAGE_MIN_RATE = 64 * 1024  # bytes/s: a message slower than this is a slow-sender attack (4 MiB: 74 s)
BUFFERED_BYTES_MAX = 128 * 1024 * 1024  # received, not yet delivered bytes, all connections of a server together
PEER_MEMORY_BUDGET = 256 * 1024 * 1024  # what all connections of one server may cost, documented worst case


@dataclass(frozen=True)
class ServerLimits:
    """The admission bounds of one listening server; the defaults are the module's constants.

    Tests shrink them to flood a server cheaply; the production values
    above are what docs/TRANSPORT.md "Floods" describes.
    """

    connections_max: int = CONNECTIONS_MAX
    connections_per_ip: int = CONNECTIONS_PER_IP_MAX
    connections_per_key: int = CONNECTIONS_PER_KEY_MAX
    handshakes_max: int = HANDSHAKES_MAX
    handshakes_per_ip: int = HANDSHAKES_PER_IP_MAX
    buffered_bytes_max: int = BUFFERED_BYTES_MAX
