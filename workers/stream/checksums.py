"""Whole-file and per-chunk checksums: names, values, hashers and combine functions.

Why combine functions: the mover writes chunks in parallel and out of order, and
a retried file reuses chunks done by an earlier attempt.  adler32, crc32 and
crc32c of a whole file can be computed from the per-chunk values and lengths
(zlib's ``adler32_combine``/``crc32_combine``), so no second pass over the data
is needed.  md5/sha* cannot; the engine feeds them the bytes in order.

Values are lowercase hex.  adler32/crc32/crc32c are 32-bit numbers that sites
write with or without leading zeros ("0a1b2c3d" vs "a1b2c3d"), so they compare
as numbers and are formatted as 8 hex digits.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Protocol

import crc32c as _crc32c

DEFAULT_ALGORITHM = "adler32"
# The 32-bit checksums whose whole-file value combines from per-chunk values.
COMBINABLE = frozenset({"adler32", "crc32", "crc32c"})
ALGORITHMS = frozenset({"adler32", "crc32", "crc32c", "md5", "sha1", "sha256"})

_ALIASES = {
    "adler": "adler32",
    "adler-32": "adler32",
    "ad": "adler32",
    "crc-32": "crc32",
    "crc-32c": "crc32c",
    "crc32-c": "crc32c",
    "sha": "sha1",
    "sha-1": "sha1",
    "sha-256": "sha256",
    "md-5": "md5",
}

_ADLER_BASE = 65521
_CRC32_POLY = 0xEDB88320  # reflected
_CRC32C_POLY = 0x82F63B78  # reflected (Castagnoli)


def normalise_algorithm(name: str) -> str:
    """The canonical lowercase name for ``name`` ("ADLER32" → "adler32"); ValueError if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ALGORITHMS:
        known = ", ".join(sorted(ALGORITHMS))
        raise ValueError(f"unknown checksum algorithm {name!r} (known: {known})")
    return key


def normalise_value(algorithm: str, value: str) -> str:
    """``value`` as lowercase hex; 32-bit algorithms padded to 8 digits."""
    alg = normalise_algorithm(algorithm)
    text = value.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    try:
        number = int(text, 16)
    except ValueError:
        raise ValueError(f"{alg} value {value!r} is not hexadecimal") from None
    if alg in COMBINABLE:
        if number > 0xFFFFFFFF:
            raise ValueError(f"{alg} value {value!r} is longer than 32 bits")
        return f"{number:08x}"
    digits = hashlib.new(alg).digest_size * 2
    if len(text) != digits:
        raise ValueError(f"{alg} value {value!r} should have {digits} hex digits")
    return text


def values_equal(algorithm: str, a: str, b: str) -> bool:
    """Whether two values of ``algorithm`` are the same checksum (leading zeros ignored)."""
    try:
        return normalise_value(algorithm, a) == normalise_value(algorithm, b)
    except ValueError:
        return False


def format_value(algorithm: str, value: int) -> str:
    """A 32-bit checksum as the canonical 8 hex digits."""
    return f"{value & 0xFFFFFFFF:08x}"


@dataclass(frozen=True)
class ChecksumSpec:
    """A requested checksum: the algorithm and, optionally, the expected value."""

    algorithm: str
    value: str | None = None

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}" if self.value else self.algorithm


def parse_spec(text: str) -> ChecksumSpec:
    """Parse "alg:value" or "alg" ("ADLER32:0A1B2C3D" → adler32, "0a1b2c3d").

    A bare hex string is not accepted: guessing the algorithm from a value's
    length would silently compare against the wrong thing.
    """
    alg, sep, value = text.strip().partition(":")
    name = normalise_algorithm(alg)
    if not sep or not value.strip():
        return ChecksumSpec(name)
    return ChecksumSpec(name, normalise_value(name, value))


def format_checksum(algorithm: str, value: str) -> str:
    """The "alg:value" form used in results and on the command line."""
    return f"{algorithm}:{value}"


# --- combine -----------------------------------------------------------------


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """adler32 of A+B from adler32(A), adler32(B) and len(B) (zlib's adler32_combine)."""
    rem = len2 % _ADLER_BASE
    a1_lo, a1_hi = adler1 & 0xFFFF, (adler1 >> 16) & 0xFFFF
    a2_lo, a2_hi = adler2 & 0xFFFF, (adler2 >> 16) & 0xFFFF
    sum1 = (a1_lo + a2_lo - 1) % _ADLER_BASE
    sum2 = (rem * a1_lo + a1_hi + a2_hi - rem) % _ADLER_BASE
    return sum1 | (sum2 << 16)


def _multmodp(a: int, b: int, poly: int) -> int:
    """a(x)·b(x) modulo the CRC polynomial, in the reflected bit order zlib uses."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ poly if b & 1 else b >> 1


def _x2n_table(poly: int) -> tuple[int, ...]:
    """x^(2^n) mod p for n = 0..31, so shifting by any length takes ≤ 64 multiplications."""
    p = 1 << 30  # x^1
    table = [p]
    for _ in range(1, 32):
        p = _multmodp(p, p, poly)
        table.append(p)
    return tuple(table)


_X2N = {_CRC32_POLY: _x2n_table(_CRC32_POLY), _CRC32C_POLY: _x2n_table(_CRC32C_POLY)}


def _crc_combine(crc1: int, crc2: int, len2: int, poly: int) -> int:
    table = _X2N[poly]
    shift = 1 << 31  # x^0
    n, k = len2, 3  # 8 bits per byte: x^(8·len2) = x^(2^3 · len2)
    while n:
        if n & 1:
            shift = _multmodp(table[k & 31], shift, poly)
        n >>= 1
        k += 1
    return _multmodp(shift, crc1, poly) ^ crc2


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """crc32 of A+B from crc32(A), crc32(B) and len(B)."""
    return _crc_combine(crc1, crc2, len2, _CRC32_POLY)


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """crc32c of A+B from crc32c(A), crc32c(B) and len(B)."""
    return _crc_combine(crc1, crc2, len2, _CRC32C_POLY)


_INITIAL = {"adler32": 1, "crc32": 0, "crc32c": 0}


def initial_value(algorithm: str) -> int:
    """The checksum of zero bytes for a combinable algorithm."""
    return _INITIAL[algorithm]


def combine(algorithm: str, value1: int, value2: int, len2: int) -> int:
    """Combine two consecutive pieces' values for a combinable algorithm."""
    if algorithm == "adler32":
        return adler32_combine(value1, value2, len2)
    if algorithm == "crc32":
        return crc32_combine(value1, value2, len2)
    if algorithm == "crc32c":
        return crc32c_combine(value1, value2, len2)
    raise ValueError(f"{algorithm} values do not combine")


def combine_all(algorithm: str, pieces: list[tuple[int, int]]) -> int:
    """The whole value from (value, length) of consecutive pieces, in order."""
    total = initial_value(algorithm)
    for value, length in pieces:
        total = combine(algorithm, total, value, length)
    return total


# --- incremental hashers --------------------------------------------------------

Buffer = bytes | bytearray | memoryview


class Hasher(Protocol):
    """An incremental checksum; ``update`` releases the GIL on large buffers."""

    algorithm: str

    def update(self, data: Buffer) -> None: ...

    def hexdigest(self) -> str: ...


class Running32:
    """A running adler32/crc32/crc32c whose integer value can also be combined."""

    def __init__(self, algorithm: str) -> None:
        if algorithm not in COMBINABLE:
            raise ValueError(f"{algorithm} is not a 32-bit combinable checksum")
        self.algorithm = algorithm
        self.value = _INITIAL[algorithm]

    def update(self, data: Buffer) -> None:
        if self.algorithm == "adler32":
            self.value = zlib.adler32(data, self.value)
        elif self.algorithm == "crc32":
            self.value = zlib.crc32(data, self.value)
        else:
            self.value = _crc32c.crc32c(data, self.value)

    def hexdigest(self) -> str:
        return format_value(self.algorithm, self.value)


class HashlibHasher:
    """md5/sha1/sha256 through hashlib (must see the bytes in order)."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._h = hashlib.new(algorithm)

    def update(self, data: Buffer) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def new_hasher(algorithm: str) -> Hasher:
    """A fresh incremental hasher for ``algorithm`` (any accepted name)."""
    alg = normalise_algorithm(algorithm)
    if alg in COMBINABLE:
        return Running32(alg)
    return HashlibHasher(alg)


def crc32c_update(data: Buffer, value: int) -> int:
    """Continue a crc32c over ``data`` (releases the GIL from 32 KiB)."""
    result: int = _crc32c.crc32c(data, value)
    return result


def checksum_bytes(algorithm: str, data: Buffer) -> str:
    """The checksum of ``data`` in one call (tests and small files)."""
    h = new_hasher(algorithm)
    h.update(data)
    return h.hexdigest()
