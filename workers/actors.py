"""The dramatiq actors: one per backend queue, each a thin call into the runtime."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from transferd.errors import PermanentError
from workers.broker import BACKENDS, actor_name, queue_name
from workers.runtime import WorkerRuntime
from workers.transfer import move_stream_file

log = logging.getLogger(__name__)

# Backends whose movers land in later issues (#5).  Their files fail with a
# clear sentence rather than wait forever in a queue nobody reads.
_NOT_YET = {"rclone": 5, "fts": 5, "rucio": 5}


async def _unavailable(rt: WorkerRuntime, backend: str, file_id: str) -> None:
    assert rt.store is not None
    record = await rt.store.claim(file_id, rt.worker_id, rt.lease_s)
    if record is None:
        return
    err = PermanentError(f"backend {backend!r} is not available on this node yet")
    await rt.store.fail(file_id, rt.worker_id, "unsupported", err.reason, retryable=False)


def declare_actors(broker: RedisBroker, rt: WorkerRuntime) -> list[dramatiq.Actor[..., None]]:
    """Declare one actor per backend queue on ``broker``, running files on ``rt``."""
    actors: list[dramatiq.Actor[..., None]] = []
    for backend in BACKENDS:

        def run(file_id: str, _backend: str = backend) -> None:
            if _backend == "stream":
                rt.call(move_stream_file(rt, file_id))
            else:
                rt.call(_unavailable(rt, _backend, file_id))

        declare = dramatiq.actor(
            actor_name=actor_name(backend), queue_name=queue_name(backend), broker=broker
        )
        actors.append(declare(run))
    return actors
