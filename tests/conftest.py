"""Fixtures: every peer is a real server started here on 127.0.0.1 at an ephemeral port."""

pytest_plugins = [
    "tests.redis_server", "tests.servers", "tests.node_proc", "tests.rucio_server",
]
