"""Pure data model and cryptography of pluto: no I/O lives here.

Everything in this package is deterministic given its inputs (randomness is
passed in or drawn from the OS CSPRNG at key creation only), so it can be
unit-tested without a network or a disk.
"""
