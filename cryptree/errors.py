"""Exceptions raised by cryptree.

Every error is a `CryptreeError`, itself a `ValueError`, so callers that
handle "bad input" generically keep working. Messages are one line and say
what is wrong and what to do about it, because they reach people (a mistyped
recovery phrase, a pasted capability) as often as they reach logs.

Hostile input (a slot, chunk or manifest fetched from a peer, or written by
someone who shared a folder) must surface as one of these, never as a
KeyError/TypeError from deep inside a decoder.
"""

from __future__ import annotations


class CryptreeError(ValueError):
    """Base class of every error cryptree raises on bad input."""


class PhraseError(CryptreeError):
    """A recovery phrase (or seed) that is malformed: word count, unknown word, checksum."""


class CapabilityError(CryptreeError):
    """A capability string or object that is malformed, or used for something it cannot grant."""


class DecryptionError(CryptreeError):
    """Ciphertext that does not authenticate under the key given, or content whose hash is wrong."""


class SignatureError(CryptreeError):
    """A signed slot whose signature does not verify, or that was signed by the wrong writer."""


class FormatError(CryptreeError):
    """Authenticated plaintext (or a sealed object's header) that does not follow the format."""
