"""Hard bounds on everything a remote party can make us hold or wait for.

Every number a hostile peer could inflate is capped here, in one place, so a
reviewer can see the worst case a connection costs.
"""

NOISE_FRAME_MAX = 65535  # the Noise spec's limit on one transport message
FRAME_PLAINTEXT_MAX = NOISE_FRAME_MAX - 16  # minus the ChaChaPoly tag
MESSAGE_MAX = 4 * 1024 * 1024 + 64 * 1024  # one CBOR message: a full slot plus headroom
STREAM_CHUNK = 256 * 1024  # data piece of a streamed fragment
FRAGMENT_MAX = 64 * 1024 * 1024  # largest fragment a peer accepts
CONCURRENT_REQUESTS_MAX = 64  # in flight per connection, each direction
CONNECTIONS_MAX = 512  # per listening server
HANDSHAKE_TIMEOUT = 10.0  # seconds for the whole Noise handshake
REQUEST_TIMEOUT = 30.0  # default wait for a response
STREAM_IDLE_TIMEOUT = 30.0  # longest gap between two pieces of a stream
IDLE_CONNECTION_TIMEOUT = 600.0  # server closes a connection silent this long
