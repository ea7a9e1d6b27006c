"""Fixtures: every peer is a real server started here on 127.0.0.1 at an ephemeral port."""

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.redis_server", "tests.servers", "tests.node_proc", "tests.rucio_server",
]


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """An empty destination folder for the test (allowed as a root where a node needs one)."""
    d = tmp_path / "dest"
    d.mkdir()
    return d
