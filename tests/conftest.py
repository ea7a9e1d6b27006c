"""Fixtures: every peer is a real server started here on 127.0.0.1 at an ephemeral port."""

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from workers.stream.http import new_session

pytest_plugins = [
    "tests.redis_server", "tests.servers", "tests.node_proc", "tests.rucio_server",
    "tests.oidc_server",
]


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """An empty destination folder for the test (allowed as a root where a node needs one)."""
    d = tmp_path / "dest"
    d.mkdir()
    return d


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The HTTP session the stream mover makes (``new_session()``), closed after the test."""
    s = new_session()
    yield s
    await s.close()
