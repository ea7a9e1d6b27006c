"""The dramatiq Redis broker as transferd uses it: one queue per backend.

No TimeLimit middleware (a 4 GiB file may take longer than dramatiq's 10-minute
default; our own leases, heartbeats and deadlines make sure nothing runs
forever) and no dramatiq Retries (retries are decided per file by the store,
with backoff, and survive restarts).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

BACKENDS = ("stream", "rclone", "fts", "rucio")


def queue_name(backend: str) -> str:
    return f"transfer.{backend}"


def actor_name(backend: str) -> str:
    return f"transfer_{backend}"


def make_broker(redis_url: str) -> RedisBroker:
    """A broker on ``redis_url`` with only the middleware transferd wants."""
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=redis_url, middleware=[], namespace="td-dramatiq"
    )
    for backend in BACKENDS:
        broker.declare_queue(queue_name(backend))
    return broker


def transfer_message(backend: str, file_id: str) -> dramatiq.Message[None]:
    """The message that asks a worker to move one file."""
    return dramatiq.Message(
        queue_name=queue_name(backend),
        actor_name=actor_name(backend),
        args=(file_id,),
        kwargs={},
        options={},
    )
