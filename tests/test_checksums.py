"""Checksum names, values and the combine functions the parallel mover relies on."""

from __future__ import annotations

import hashlib
import itertools
import random
import zlib

import crc32c
import pytest

from workers.stream import checksums
from workers.stream.checksums import ChecksumSpec, parse_spec

DIRECT = {
    "adler32": lambda b: zlib.adler32(b),
    "crc32": lambda b: zlib.crc32(b),
    "crc32c": lambda b: crc32c.crc32c(b),
}


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("adler32", ChecksumSpec("adler32")),
        ("ADLER32", ChecksumSpec("adler32")),
        ("adler32:0A1B2C3D", ChecksumSpec("adler32", "0a1b2c3d")),
        ("adler32:a1b2c3d", ChecksumSpec("adler32", "0a1b2c3d")),
        ("AD:1", ChecksumSpec("adler32", "00000001")),
        ("crc32c:DEADBEEF", ChecksumSpec("crc32c", "deadbeef")),
        ("CRC32:0x1", ChecksumSpec("crc32", "00000001")),
        ("md5", ChecksumSpec("md5")),
        ("MD5:D41D8CD98F00B204E9800998ECF8427E",
         ChecksumSpec("md5", "d41d8cd98f00b204e9800998ecf8427e")),
        ("sha-256", ChecksumSpec("sha256")),
        ("SHA:" + "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709",
         ChecksumSpec("sha1", "da39a3ee5e6b4b0d3255bfef95601890afd80709")),
        ("adler32:", ChecksumSpec("adler32")),
    ],
)
def test_parse_spec(text: str, spec: ChecksumSpec) -> None:
    assert parse_spec(text) == spec


@pytest.mark.parametrize(
    "text",
    ["blake9", "adler32:xyz", "adler32:123456789", "md5:abc", "sha256:00", "0a1b2c3d"],
)
def test_parse_spec_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_spec(text)


@pytest.mark.parametrize(
    ("alg", "a", "b", "equal"),
    [
        ("adler32", "0a1b2c3d", "a1b2c3d", True),
        ("adler32", "0A1B2C3D", "a1b2c3d", True),
        ("crc32c", "00000000", "0", True),
        ("crc32", "1", "2", False),
        ("md5", "D41D8CD98F00B204E9800998ECF8427E", "d41d8cd98f00b204e9800998ecf8427e", True),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e", "0d41d8cd98f00b204e9800998ecf8427", False),
        ("adler32", "not-hex", "not-hex", False),
    ],
)
def test_values_equal(alg: str, a: str, b: str, equal: bool) -> None:
    assert checksums.values_equal(alg, a, b) is equal


def test_adler32_formats_as_eight_digits() -> None:
    assert checksums.checksum_bytes("adler32", b"") == "00000001"
    assert checksums.format_value("adler32", 0xA1B2C3D) == "0a1b2c3d"


@pytest.mark.parametrize("alg", ["adler32", "crc32", "crc32c", "md5", "sha1", "sha256"])
def test_hasher_matches_reference(alg: str) -> None:
    data = random.Random(alg).randbytes(300_000)
    h = checksums.new_hasher(alg)
    for i in range(0, len(data), 70_001):
        h.update(memoryview(data)[i : i + 70_001])
    expected = f"{DIRECT[alg](data):08x}" if alg in DIRECT else hashlib.new(alg, data).hexdigest()
    assert h.hexdigest() == expected


@pytest.mark.parametrize("alg", sorted(checksums.COMBINABLE))
@pytest.mark.parametrize("seed", range(8))
def test_combine_over_random_splits_equals_direct(alg: str, seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.choice([0, 1, 1000, 200_000, 70_000]))
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 6)))
    if seed % 2:
        cuts += cuts[:2]  # repeated cut points give 0-byte pieces
        cuts.sort()
    bounds = [0, *cuts, len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    values = [(DIRECT[alg](p), len(p)) for p in pieces]
    assert checksums.combine_all(alg, values) == DIRECT[alg](data)


@pytest.mark.parametrize("alg", sorted(checksums.COMBINABLE))
def test_combine_with_empty_and_large_lengths(alg: str) -> None:
    a = b"x" * 100_000
    empty = DIRECT[alg](b"")
    assert checksums.combine(alg, DIRECT[alg](a), empty, 0) == DIRECT[alg](a)
    assert checksums.combine(alg, empty, DIRECT[alg](a), len(a)) == DIRECT[alg](a)
    # lengths past adler32's modulus and across many doublings of the CRC shift table
    big = random.Random(1).randbytes(3 * 65521 + 17)
    assert checksums.combine(alg, DIRECT[alg](a), DIRECT[alg](big), len(big)) == DIRECT[alg](
        a + big
    )


def test_md5_does_not_combine() -> None:
    with pytest.raises(ValueError):
        checksums.combine("md5", 1, 2, 3)
