"""Workers measure each link's round trip (their quickest response per file) and the
links view shows it; chunk tuning reads the same value (policies.chunking.tune)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.node_proc import Node, create_token, wait_until
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer
from tests.test_link_policies import link_named
from transferd.client import Client

MiB = 1024 * 1024


def test_a_far_link_shows_its_round_trip_and_a_near_one_does_not(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    fault_proxy: Callable[[str], FaultProxy], tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (nginx_server.root / "obs.bin").write_bytes(os.urandom(MiB))
    far = fault_proxy(nginx_server.url)
    far.set(request_latency_s=0.15)  # every request waits 150 ms on its way to the server
    near = fault_proxy(nginx_server.url)
    node = node_factory(allow_roots=[dest])
    user = Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))
    ops = Client(node.url, create_token("ops", "operator", redis_url=redis_server.url))
    near_url = near.url.replace("127.0.0.1", "localhost")  # another host, another link
    job = user.submit(
        [{"source": f"{far.url}/obs.bin", "destination": f"file://{dest}/far{i}"} for i in range(3)]
        + [{"source": f"{near_url}/obs.bin", "destination": f"file://{dest}/near{i}"}
           for i in range(3)], {})["job_id"]
    wait_until(lambda: user.job(job)["state"] == "FINISHED", 60, "the job to finish")

    far_link = link_named(ops, "127.0.0.1 -> local")
    near_link = link_named(ops, "localhost -> local")
    assert far_link is not None and near_link is not None
    assert far_link["rtt_s"] is not None and 0.15 <= far_link["rtt_s"] < 1.5
    assert near_link["rtt_s"] is not None and near_link["rtt_s"] < 0.15
