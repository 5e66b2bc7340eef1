"""Bounds on what one client can make a storage peer hold while it uploads.

Space is reserved only against bytes that have arrived, an upload must keep
moving, and one client key may hold only so much at once: announcing a
large fragment and trickling it costs the sender about as much as it costs
the peer (docs/TRUST.md, "Attacks on a storage peer's space").
"""

UPLOADS_PER_CLIENT_MAX = 16  # uploads one client key may have in flight (a mount uses up to 8 per peer)
RESERVED_PER_CLIENT_MAX = 256 * 1024 * 1024  # received-but-uncommitted bytes one client key may hold
UPLOAD_STEP = 1024 * 1024  # an upload must deliver this many bytes (or its rest) ...
UPLOAD_STEP_DEADLINE = 60.0  # ... within this many seconds, every step (about 17 KiB/s), or it is cancelled
