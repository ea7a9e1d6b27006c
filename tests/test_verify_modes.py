"""What each verify mode compares, against a real wsgidav source that declares checksums.

wsgidav answers PROPFIND with ``oc:checksums`` (as ownCloud/Nextcloud do), and
the fixture can make that declaration wrong.  Every copy below also asks for a
value of its own, right or wrong, so a test sees which of the two each mode
trusts: ``target`` only the requested value, ``source`` only the declaration,
``none`` neither (but the checksum is still computed and reported).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import aiohttp
import pytest

from policies.chunking import ChunkPolicy, MiB
from tests.servers import WsgidavServer
from transferd import errors
from workers.stream.engine import copy_file
from workers.stream.http import HttpSource
from workers.stream.local import FileSink, url_of

SMALL_CHUNKS = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=4)
WRONG = {"adler32": "0badc0de", "md5": hashlib.md5(b"something else").hexdigest()}


def real_values(data: bytes) -> dict[str, str]:
    return {"adler32": f"{zlib.adler32(data):08x}", "md5": hashlib.md5(data).hexdigest()}


def serve(server: WsgidavServer, name: str, *, declared_right: bool) -> bytes:
    """Put 3 MiB (plus a bit) at ``/name``; wsgidav declares its true or a wrong checksum."""
    data = os.urandom(3 * MiB + 11)
    (server.root / name).write_bytes(data)
    values = real_values(data) if declared_right else WRONG
    server.checksum_overrides[f"/{name}"] = f"MD5:{values['md5']} ADLER32:{values['adler32']}"
    return data


async def copy(server: WsgidavServer, session: aiohttp.ClientSession, name: str, dst: Path,
               *, expected: str, verify: str) -> str:
    """The checksum the engine reports for a copy of ``/name`` into ``dst``."""
    result = await copy_file(HttpSource(f"dav://127.0.0.1:{server.port}/{name}", session),
                             FileSink(url_of(dst)), expected_checksum=expected, verify=verify,
                             policy=SMALL_CHUNKS)
    return result.checksum


@pytest.mark.parametrize("alg", ["adler32", "md5"])
@pytest.mark.parametrize(("verify", "declared_right", "requested_right"), [
    pytest.param("target", False, True, id="target-ignores-a-wrong-source-declaration"),
    pytest.param("none", False, False, id="none-reports-and-commits-although-both-are-wrong"),
    pytest.param("source", True, False, id="source-ignores-a-wrong-requested-value"),
])
async def test_mode_commits_and_reports_the_computed_checksum(
        verify: str, declared_right: bool, requested_right: bool, alg: str,
        wsgidav_server: WsgidavServer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    data = serve(wsgidav_server, "f.bin", declared_right=declared_right)
    real = real_values(data)[alg]
    requested = real if requested_right else WRONG[alg]
    dst = tmp_path / "f.bin"
    checksum = await copy(wsgidav_server, session, "f.bin", dst,
                          expected=f"{alg}:{requested}", verify=verify)
    assert checksum == f"{alg}:{real}"  # computed, never merely the requested value
    assert dst.read_bytes() == data


# The side a mode trusts is the only wrong one, so a failure can only come from it.
@pytest.mark.parametrize("alg", ["adler32", "md5"])
@pytest.mark.parametrize(("verify", "declared_right", "requested_right", "which"), [
    pytest.param("target", True, False, "requested value",
                 id="target-fails-on-a-wrong-requested-value-only"),
    pytest.param("source", False, True, "source declares",
                 id="source-fails-on-a-wrong-declaration-despite-a-right-request"),
])
async def test_mode_fails_on_the_value_it_trusts_and_leaves_nothing(
        verify: str, declared_right: bool, requested_right: bool, which: str, alg: str,
        wsgidav_server: WsgidavServer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    data = serve(wsgidav_server, "f.bin", declared_right=declared_right)
    real = real_values(data)[alg]
    requested = real if requested_right else WRONG[alg]
    dst = tmp_path / "f.bin"
    with pytest.raises(errors.ChecksumMismatch) as caught:
        await copy(wsgidav_server, session, "f.bin", dst, expected=f"{alg}:{requested}",
                   verify=verify)
    assert caught.value.error_class == "checksum"
    assert caught.value.reason == (
        f"{alg} checksum mismatch ({which}): expected {WRONG[alg]}, got {real}"
    )
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []  # the partial is gone too
