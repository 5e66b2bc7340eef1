"""Errors raised by the transport layer. Each carries a one-line message."""


class TransportError(Exception):
    """Base class: something went wrong talking to a remote party."""


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
