"""Device transport keys: random X25519 static keys kept in a local file.

A device's transport key is its peer id on the network. It is deliberately
not derived from the user's recovery phrase: peer identity is not user
identity, so network observers cannot link a user's devices through it.
"""

from __future__ import annotations

import os
from pathlib import Path

from nacl.public import PrivateKey

from transport.errors import KeyFileError


def load_or_create_key(path: Path) -> PrivateKey:
    """Load the 32-byte private key at `path`, creating it (mode 0600) if absent."""
    path = Path(path)
    if path.exists():
        data = path.read_bytes()
        if len(data) != 32:
            raise KeyFileError(
                f"{path} is not a pluto key file (expected 32 bytes, found {len(data)});"
                " move it away to create a new one"
            )
        return PrivateKey(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = PrivateKey.generate()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, bytes(key))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key
