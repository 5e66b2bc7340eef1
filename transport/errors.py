"""Errors raised by the transport layer. Each carries a one-line message.

Every exception class the transport layer defines derives from
`TransportError`, so a caller that talks to peers or to the coordinator
needs one `except TransportError` to survive any of them; the subclasses say
what went wrong when the caller can do something about it (retry after a
timeout, give up on a peer that refused with a code, move a damaged key
file away).

Hostile input (a frame, a message, an answer) surfaces as one of these,
never as a KeyError/TypeError from a decoder. Two kinds of failure are not
TransportErrors because no remote caused them: ValueError for a bad argument
from our own caller (a malformed address or peer id, a misused
constructor), and OSError from the local disk of a storage peer, which its
handler reports to the remote as an "internal" refusal.
"""

from __future__ import annotations


class TransportError(Exception):
    """Base class of every transport error."""


class ProtocolError(TransportError):
    """The remote sent something that breaks the protocol; the connection is closed."""


class HandshakeError(TransportError):
    """The Noise handshake failed, timed out, or authenticated an unexpected peer."""


class ConnectionClosed(TransportError):
    """The connection ended (cleanly or not) while we were using it."""


class RequestTimeout(TransportError):
    """The remote did not answer in time."""


class RemoteError(TransportError):
    """The remote understood the request and refused it.

    `code` is a short machine-readable word (e.g. "quota", "bad_signature",
    "stale_seq", "not_found", "bad_request"); the message is for people.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class KeyFileError(TransportError):
    """A device's transport key file exists but is unusable."""
