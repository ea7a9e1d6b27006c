"""A symbolic link planted inside an allowed root after submission never leads a write out.

The file:// check at submission (``transferd.paths``) resolves links that exist
then; these tests plant one afterwards — as a parent directory, as the
``.part``, as the final name, before the copy and in the middle of it — and
copy with the real engine from a local file or a real nginx.  What a user
would notice: nothing appears or changes outside the root, and the file fails
with a permanent error whose sentence names the link.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from policies.chunking import ChunkPolicy, MiB
from tests.manifests import AfterChunks
from tests.servers import NginxServer
from transferd import errors
from workers.stream.engine import copy_file
from workers.stream.http import HttpSource, new_session
from workers.stream.local import FileSink, FileSource, url_of
from workers.stream.manifest import (
    SidecarManifestStore,
)

SMALL_CHUNKS = ChunkPolicy(chunk_size_bytes=MiB, min_chunk_bytes=MiB, max_streams=1)
VICTIM_BYTES = b"not the mover's to touch\n"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = new_session()
    yield s
    await s.close()


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, outside, source): an allowed root, a directory beside it, a 3 MiB source file."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * MiB + 5))
    return root, outside, source


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (links not followed) and its bytes."""
    found = {}
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                found[str(path.relative_to(directory))] = path.read_bytes()
    return found


def assert_refused(exc: errors.TransferError, dst: Path, link: Path) -> None:
    assert isinstance(exc, errors.PermanentError)
    assert exc.error_class == "permanent" and not exc.retryable
    assert exc.reason == (
        f"refusing to write {dst}: {link} is a symbolic link, "
        "and the destination is never written through one"
    )


# ---------------------------------------------------------------- planted before the copy


@pytest.mark.parametrize("depth", ["sub", "sub/deeper"])
async def test_a_parent_directory_turned_link_is_refused(
        depth: str, places: tuple[Path, Path, Path]) -> None:
    root, outside, source = places
    dst = root / depth / "out.bin"
    sink = FileSink(url_of(dst))
    os.symlink(outside, root / "sub")  # after the sink was made, before it writes
    with pytest.raises(errors.PermanentError) as caught:
        await copy_file(FileSource(url_of(source)), sink, policy=SMALL_CHUNKS)
    assert_refused(caught.value, dst, root / "sub")
    assert list(outside.iterdir()) == []  # not even the missing "deeper" was made there
    await sink.abort(keep_partial=False)
    assert list(outside.iterdir()) == []


async def test_the_part_file_turned_link_is_refused(places: tuple[Path, Path, Path]) -> None:
    root, outside, source = places
    victim = outside / "victim"
    victim.write_bytes(VICTIM_BYTES)
    dst = root / "out.bin"
    sink = FileSink(url_of(dst))
    os.symlink(victim, root / "out.bin.part")
    with pytest.raises(errors.PermanentError) as caught:
        # resume_key makes the sink look for an earlier attempt's .part to keep
        await copy_file(FileSource(url_of(source)), sink, policy=SMALL_CHUNKS,
                        resume_key="attempt-1")
    assert_refused(caught.value, dst, root / "out.bin.part")
    assert tree(outside) == {"victim": VICTIM_BYTES}
    assert not dst.exists()


async def test_a_dangling_part_link_creates_nothing_outside(
        places: tuple[Path, Path, Path]) -> None:
    root, outside, source = places
    dst = root / "out.bin"
    os.symlink(outside / "new.bin", root / "out.bin.part")
    with pytest.raises(errors.PermanentError) as caught:
        await copy_file(FileSource(url_of(source)), FileSink(url_of(dst)), policy=SMALL_CHUNKS)
    assert_refused(caught.value, dst, root / "out.bin.part")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("overwrite", [False, True])
async def test_the_final_name_as_a_link_is_refused_even_with_overwrite(
        overwrite: bool, places: tuple[Path, Path, Path]) -> None:
    root, outside, source = places
    victim = outside / "victim"
    victim.write_bytes(VICTIM_BYTES)
    dst = root / "out.bin"
    os.symlink(victim, dst)
    with pytest.raises(errors.PermanentError) as caught:
        await copy_file(FileSource(url_of(source)), FileSink(url_of(dst), overwrite=overwrite),
                        policy=SMALL_CHUNKS)
    assert_refused(caught.value, dst, dst)
    assert tree(outside) == {"victim": VICTIM_BYTES}
    assert os.readlink(dst) == str(victim)  # left as it was, for someone to look at


async def test_clean_up_never_removes_through_a_link(places: tuple[Path, Path, Path]) -> None:
    """The worker removes a failed file's partial; through a planted parent link it must not."""
    root, outside, _source = places
    (outside / "out.bin.part").write_bytes(VICTIM_BYTES)
    os.symlink(outside, root / "sub")
    sink = FileSink(url_of(root / "sub" / "out.bin"))
    await sink.abort(keep_partial=False)
    assert tree(outside) == {"out.bin.part": VICTIM_BYTES}


# ---------------------------------------------------------------- planted during the copy


async def test_final_name_linked_mid_copy_from_nginx_is_refused_at_commit(
        places: tuple[Path, Path, Path], nginx_server: NginxServer,
        session: aiohttp.ClientSession, tmp_path: Path) -> None:
    root, outside, source = places
    (nginx_server.root / "src.bin").write_bytes(source.read_bytes())
    victim = outside / "victim"
    victim.write_bytes(VICTIM_BYTES)
    dst = root / "out.bin"
    manifest = AfterChunks(SidecarManifestStore(tmp_path / "m.json"), 1,
                           lambda: os.symlink(victim, dst))
    with pytest.raises(errors.PermanentError) as caught:
        await copy_file(HttpSource(f"{nginx_server.url}/src.bin", session),
                        FileSink(url_of(dst), overwrite=True), manifest=manifest,
                        policy=SMALL_CHUNKS)
    assert manifest.n < 0  # every chunk was written before the commit refused
    assert_refused(caught.value, dst, dst)
    assert tree(outside) == {"victim": VICTIM_BYTES}


async def test_parent_swapped_for_a_link_mid_copy_still_lands_inside(
        places: tuple[Path, Path, Path], nginx_server: NginxServer,
        session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """The sink holds the directory it opened; the rename happens there, not at the link."""
    root, outside, source = places
    data = source.read_bytes()
    (nginx_server.root / "src.bin").write_bytes(data)
    dst = root / "sub" / "out.bin"

    def swap() -> None:
        os.rename(root / "sub", root / "moved")
        os.symlink(outside, root / "sub")

    manifest = AfterChunks(SidecarManifestStore(tmp_path / "m.json"), 1, swap)
    await copy_file(HttpSource(f"{nginx_server.url}/src.bin", session), FileSink(url_of(dst)),
                    manifest=manifest, policy=SMALL_CHUNKS)
    assert manifest.n < 0
    assert list(outside.iterdir()) == []
    assert tree(root) == {"moved/out.bin": data}
