"""Avro binary primitives for the writers that skip a generic encoder on the hot path.

Pure functions, no I/O. ``long`` is zigzag + base-128 varint, least significant group
first; ``string`` and ``bytes`` are a long length then the bytes; a non-empty array or map
is one block (a long count, the items, then 0), an empty one the single byte 0 -- exactly
what fastavro and cavro write (property tests: ``tests/unit/test_prediction_codec.py``,
``tests/unit/test_history_codec.py``).
"""

from __future__ import annotations

import struct

__all__ = ["DOUBLE", "LONG_MAX", "LONG_MIN", "block", "long", "small", "string"]

LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
#: Avro ``double``: 8 bytes little-endian
DOUBLE = struct.Struct("<d").pack

#: varint bytes of a 14-bit group with more to follow, and of a last group (1 or 2 bytes):
#: a timestamp in ms (a 6-byte varint) costs 3 lookups instead of 6 turns of a loop
_GROUP = [bytes((i & 0x7F | 0x80, i >> 7 | 0x80)) for i in range(1 << 14)]
_LAST = [bytes((i,)) if i < 0x80 else bytes((i & 0x7F | 0x80, i >> 7)) for i in range(1 << 14)]


def long(n: int) -> bytes:
    """Avro ``long`` (``n`` within int64: the caller checks)."""
    z = (n << 1) ^ (n >> 63)
    if z < 0x4000:
        return _LAST[z]
    if z < 0x10000000:
        return _GROUP[z & 0x3FFF] + _LAST[z >> 14]
    if z < 0x40000000000:
        return b"".join((_GROUP[z & 0x3FFF], _GROUP[z >> 14 & 0x3FFF], _LAST[z >> 28]))
    if z < 0x100000000000000:
        return b"".join((_GROUP[z & 0x3FFF], _GROUP[z >> 14 & 0x3FFF],
                         _GROUP[z >> 28 & 0x3FFF], _LAST[z >> 42]))
    out = bytearray()
    while z >= 0x80:
        out.append(z & 0x7F | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


#: Avro ``long`` of 0..63 (a short length or count): one byte
small = [long(n) for n in range(64)]


def string(text: str) -> bytes:
    """Avro ``string`` (UTF-8)."""
    data = text.encode()
    return (small[len(data)] if len(data) < 64 else long(len(data))) + data


def block(items: list[bytes]) -> bytes:
    """An Avro array -- or map, each item its key then its value -- of encoded ``items``."""
    return b"".join([long(len(items)), *items, b"\x00"]) if items else b"\x00"
