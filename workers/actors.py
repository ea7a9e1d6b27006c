"""The dramatiq actors: one per backend queue, each a thin call into the runtime."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from transferd.errors import PermanentError
from workers.backend import Copied, FileRun, Mover, run_file
from workers.broker import BACKENDS, actor_name, queue_name
from workers.runtime import WorkerRuntime
from workers.transfer import move_stream_file

log = logging.getLogger(__name__)


def _mover(backend: str) -> Mover:
    """The mover for a non-stream backend, imported on first use (the fts3 and rucio
    clients are optional extras): a missing client fails the file with a sentence."""
    try:
        return _import_mover(backend)
    except ImportError as exc:
        missing = exc.name or str(exc)

        async def unavailable(rt: WorkerRuntime, run: FileRun) -> Copied:
            raise PermanentError(
                f"backend {backend!r} needs {missing!r}, which is not installed on this worker"
            )

        return unavailable


def _import_mover(backend: str) -> Mover:
    if backend == "rclone":
        from workers.rclone import move_rclone_file

        return move_rclone_file
    if backend == "fts":
        from workers.fts import move_fts_file

        return move_fts_file
    if backend == "rucio":
        from workers.rucio import move_rucio_file

        return move_rucio_file
    raise ValueError(f"no mover for backend {backend!r}")


def declare_actors(broker: RedisBroker, rt: WorkerRuntime) -> list[dramatiq.Actor[..., None]]:
    """Declare one actor per backend queue on ``broker``, running files on ``rt``."""
    actors: list[dramatiq.Actor[..., None]] = []
    for backend in BACKENDS:

        def run(file_id: str, _backend: str = backend) -> None:
            if _backend == "stream":
                rt.call(move_stream_file(rt, file_id))
            else:
                rt.call(run_file(rt, file_id, _mover(_backend)))

        declare = dramatiq.actor(
            actor_name=actor_name(backend), queue_name=queue_name(backend), broker=broker
        )
        actors.append(declare(run))
    return actors
