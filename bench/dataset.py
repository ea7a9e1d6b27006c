"""The bytes the benchmark moves: one big random file and many small ones, with their adler32.

Writing gigabytes from ``os.urandom`` runs at ~340 MB/s here, so every block is
cut from one 64 MiB random buffer instead: rotated by an index-dependent offset
that is not a multiple of the page size and stamped with its index, so no two
blocks or files are equal (nothing downstream can dedupe or compress them).
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BLOCK_BYTES = 64 * 1024 * 1024
SMALL_FILE_BYTES = 1024 * 1024
BIG_NAME = "big.bin"
SMALL_DIR_NAME = "small"
_STAMP_MAGIC = 0x7472616E73666572  # "transfer"
_STAMP_BYTES = 16
_READ_BYTES = 8 * 1024 * 1024

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNIT_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_size(text: str) -> int:
    """'4G', '256M', '64MiB', '1048576' -> bytes.

    K/M/G/T are binary, as curl, aria2c and rclone read them.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 4G, 256M or a number of bytes)")
    number, unit = match.groups()
    return int(float(number) * (1 << _UNIT_SHIFT[unit.upper()]))


def adler32_hex(value: int) -> str:
    return f"{value & 0xFFFFFFFF:08x}"


def same_adler32(a: str, b: str) -> bool:
    """Case- and leading-zero-insensitive, as issue 3 asks ("0a1b2c3d" == "a1b2c3d")."""
    return a.lower().lstrip("0") == b.lower().lstrip("0")


def adler32_of_file(path: Path) -> str:
    value = 1
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(_READ_BYTES):
            value = zlib.adler32(chunk, value)
    return adler32_hex(value)


@dataclass(frozen=True)
class Dataset:
    """Where the generated files are and what their checksums must be."""

    root: Path
    big_bytes: int
    big_adler32: str
    small_file_bytes: int
    small_adler32: dict[str, str]  # file name -> adler32 hex

    @property
    def big_path(self) -> Path:
        return self.root / BIG_NAME

    @property
    def small_dir(self) -> Path:
        return self.root / SMALL_DIR_NAME

    @property
    def small_count(self) -> int:
        return len(self.small_adler32)

    @property
    def small_total_bytes(self) -> int:
        return self.small_count * self.small_file_bytes


def _stamp(index: int) -> bytes:
    return struct.pack("<QQ", index, _STAMP_MAGIC)


def _take(pieces: Iterable[bytes | memoryview], length: int) -> list[bytes | memoryview]:
    out: list[bytes | memoryview] = []
    for piece in pieces:
        if length <= 0:
            break
        part = piece[:length]
        out.append(part)
        length -= len(part)
    return out


def _block(base: memoryview, index: int, length: int) -> list[bytes | memoryview]:
    """Block ``index`` of the big file as views of ``base`` (no 64 MiB copies)."""
    shift = (index * 1_000_003) % (len(base) - _STAMP_BYTES)
    return _take([_stamp(index), base[shift + _STAMP_BYTES :], base[:shift]], length)


def _small(base: memoryview, index: int, length: int) -> list[bytes | memoryview]:
    offset = (index * 7_340_033) % (len(base) - length)
    return _take([_stamp(index), base[offset + _STAMP_BYTES : offset + length]], length)


def _write(path: Path, pieces: Iterable[bytes | memoryview], value: int) -> int:
    with path.open("ab", buffering=0) as f:
        for piece in pieces:
            f.write(piece)
            value = zlib.adler32(piece, value)
    return value


def make_dataset(root: Path, big_bytes: int, small_count: int) -> Dataset:
    """Write ``root/big.bin`` and ``root/small/f00000.bin``... and return their checksums."""
    root.mkdir(parents=True, exist_ok=True)
    base = memoryview(os.urandom(BLOCK_BYTES))
    big = root / BIG_NAME
    big.unlink(missing_ok=True)
    value, written, index = 1, 0, 0
    while written < big_bytes:
        length = min(BLOCK_BYTES, big_bytes - written)
        value = _write(big, _block(base, index, length), value)
        written += length
        index += 1
    if big_bytes == 0:
        big.touch()
    small_dir = root / SMALL_DIR_NAME
    small_dir.mkdir(exist_ok=True)
    small: dict[str, str] = {}
    for i in range(small_count):
        name = f"f{i:05d}.bin"
        path = small_dir / name
        path.unlink(missing_ok=True)
        small[name] = adler32_hex(_write(path, _small(base, i, SMALL_FILE_BYTES), 1))
    return Dataset(root, big_bytes, adler32_hex(value), SMALL_FILE_BYTES, small)
