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
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from policies.chunking import ChunkPolicy, MiB
from tests.servers import WsgidavServer
from transferd import errors
from workers.stream.engine import copy_file
from workers.stream.http import HttpSource, new_session
from workers.stream.local import FileSink, url_of

SMALL_CHUNKS = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=4)
WRONG = {"adler32": "0badc0de", "md5": hashlib.md5(b"something else").hexdigest()}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = new_session()
    yield s
    await s.close()


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
async def test_target_ignores_a_wrong_source_declaration(
        alg: str, wsgidav_server: WsgidavServer, session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    data = serve(wsgidav_server, "t.bin", declared_right=False)
    real = real_values(data)[alg]
    dst = tmp_path / "t.bin"
    checksum = await copy(wsgidav_server, session, "t.bin", dst,
                          expected=f"{alg}:{real}", verify="target")
    assert checksum == f"{alg}:{real}"
    assert dst.read_bytes() == data


@pytest.mark.parametrize("alg", ["adler32", "md5"])
async def test_target_fails_on_a_wrong_requested_value_only(
        alg: str, wsgidav_server: WsgidavServer, session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    # The declaration is right here, so a failure can only come from the request.
    data = serve(wsgidav_server, "t.bin", declared_right=True)
    dst = tmp_path / "t.bin"
    with pytest.raises(errors.ChecksumMismatch) as caught:
        await copy(wsgidav_server, session, "t.bin", dst,
                   expected=f"{alg}:{WRONG[alg]}", verify="target")
    assert caught.value.error_class == "checksum"
    assert caught.value.reason == (
        f"{alg} checksum mismatch (requested value): "
        f"expected {WRONG[alg]}, got {real_values(data)[alg]}"
    )
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == []  # the partial is gone too


@pytest.mark.parametrize("alg", ["adler32", "md5"])
async def test_none_reports_and_commits_although_both_are_wrong(
        alg: str, wsgidav_server: WsgidavServer, session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    data = serve(wsgidav_server, "n.bin", declared_right=False)
    dst = tmp_path / "n.bin"
    checksum = await copy(wsgidav_server, session, "n.bin", dst,
                          expected=f"{alg}:{WRONG[alg]}", verify="none")
    assert checksum == f"{alg}:{real_values(data)[alg]}"  # computed, not the requested value
    assert dst.read_bytes() == data


@pytest.mark.parametrize("alg", ["adler32", "md5"])
async def test_source_ignores_a_wrong_requested_value(
        alg: str, wsgidav_server: WsgidavServer, session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    data = serve(wsgidav_server, "s.bin", declared_right=True)
    dst = tmp_path / "s.bin"
    checksum = await copy(wsgidav_server, session, "s.bin", dst,
                          expected=f"{alg}:{WRONG[alg]}", verify="source")
    assert checksum == f"{alg}:{real_values(data)[alg]}"
    assert dst.read_bytes() == data


@pytest.mark.parametrize("alg", ["adler32", "md5"])
async def test_source_fails_on_a_wrong_declaration_despite_a_right_request(
        alg: str, wsgidav_server: WsgidavServer, session: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    data = serve(wsgidav_server, "s.bin", declared_right=False)
    real = real_values(data)[alg]
    dst = tmp_path / "s.bin"
    with pytest.raises(errors.ChecksumMismatch) as caught:
        await copy(wsgidav_server, session, "s.bin", dst, expected=f"{alg}:{real}",
                   verify="source")
    assert caught.value.reason == (
        f"{alg} checksum mismatch (source declares): expected {WRONG[alg]}, got {real}"
    )
    assert not dst.exists()
