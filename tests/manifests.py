"""A real manifest store wrapped so a test can act once some chunks are recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from workers.stream.manifest import ChunkRecord, Manifest, ManifestHeader, ManifestStore


class AfterChunks:
    """A real manifest store that runs ``then()`` once ``n`` chunks are recorded."""

    def __init__(self, inner: ManifestStore, n: int, then: Callable[[], None]) -> None:
        self.inner, self.n, self.then = inner, n, then

    async def load(self) -> Manifest | None:
        return await self.inner.load()

    async def reset(self, header: ManifestHeader) -> None:
        await self.inner.reset(header)

    async def record(self, index: int, chunk: ChunkRecord) -> None:
        await self.inner.record(index, chunk)
        self.n -= 1
        if self.n == 0:
            self.then()

    async def clear(self) -> None:
        await self.inner.clear()


def cancel_after(inner: ManifestStore, n: int, cancel: asyncio.Event) -> AfterChunks:
    """A real manifest store that sets ``cancel`` once ``n`` chunks are recorded."""
    return AfterChunks(inner, n, cancel.set)
