"""Per-file bearer tokens for a job's endpoints, as FTS3's ``source_tokens`` and
``destination_tokens``: kept while the job may run, then gone.

A submitted file may carry ``source_token`` and ``destination_token``; the
stream mover sends ``Authorization: Bearer <token>`` to that endpoint, rclone
gives it to its on-the-fly WebDAV remote, and the fts backend passes it on as
the FTS job's ``source_tokens``/``destination_tokens``.  Keys
(namespace ``td``; see docs/contracts.md):

- ``td:creds:{job_id}`` hash ``k`` → token, in clear (a worker on another
  machine must present it), each distinct token once: the 10,000 files of an
  expanded folder share one.  Written with the job in the store's one MULTI;
  deleted by the store's own script in the step that ends the job (FINISHED,
  FINISHEDDIRTY, FAILED, CANCELED or EXPIRED).
- ``td:credrefs:{job_id}`` hash ``index`` → ``"ks,kd"``: which token a file's
  source and destination use ("" for none).  No secret; it stays with the job
  so a file retried after its job ended fails with a clear sentence instead of
  reaching its endpoint without the credential.

A token is never in a file record, an API answer, an event or a log line, and
``FileSpec`` keeps it out of its ``repr``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from redis.asyncio import Redis

from transferd.errors import AuthError
from transferd.models import FileSpec

__all__ = [
    "bearer_headers",
    "bearer_of",
    "creds_key",
    "endpoint_headers",
    "endpoint_tokens",
    "refs_key",
    "token_rows",
]

HeaderProvider = Callable[[], Awaitable[Mapping[str, str]]]


def creds_key(namespace: str, job_id: str) -> str:
    return f"{namespace}:creds:{job_id}"


def refs_key(namespace: str, job_id: str) -> str:
    return f"{namespace}:credrefs:{job_id}"


def token_rows(files: Sequence[FileSpec]) -> tuple[dict[str, str], dict[str, str]]:
    """(``creds`` hash, ``credrefs`` hash) for a job's files; both empty without tokens."""
    numbers: dict[str, int] = {}
    refs: dict[str, str] = {}
    for index, spec in enumerate(files):
        if spec.source_token is None and spec.destination_token is None:
            continue
        refs[str(index)] = ",".join(
            "" if token is None else str(numbers.setdefault(token, len(numbers)))
            for token in (spec.source_token, spec.destination_token)
        )
    return {str(k): token for token, k in numbers.items()}, refs


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def bearer_headers(token: str) -> HeaderProvider:
    """A HeaderProvider sending ``token`` as ``Authorization: Bearer``."""
    async def provider() -> Mapping[str, str]:
        return {"Authorization": f"Bearer {token}"}

    return provider


async def endpoint_tokens(
    redis: Redis, job_id: str, index: int, *, namespace: str = "td"
) -> tuple[str | None, str | None]:
    """The (source, destination) tokens of one file; None where it has no token.

    Raises AuthError when the file was given a token that is gone (its job ended)."""
    ref = await redis.hget(refs_key(namespace, job_id), str(index))
    if ref is None:
        return None, None
    source_k, _, destination_k = _text(ref).partition(",")
    wanted = [k for k in (source_k, destination_k) if k]
    values = await redis.hmget(creds_key(namespace, job_id), wanted)
    if any(v is None for v in values):
        raise AuthError(
            "the endpoint token was deleted when the job ended; submit the file again "
            "with a fresh token"
        )
    tokens = {k: _text(v) for k, v in zip(wanted, values, strict=True)}
    return tokens.get(source_k), tokens.get(destination_k)


async def endpoint_headers(
    redis: Redis, job_id: str, index: int, *, namespace: str = "td"
) -> tuple[HeaderProvider | None, HeaderProvider | None]:
    """``endpoint_tokens`` as HeaderProviders (``Authorization: Bearer``), for the mover."""
    source, destination = await endpoint_tokens(redis, job_id, index, namespace=namespace)
    return (bearer_headers(source) if source else None,
            bearer_headers(destination) if destination else None)


async def bearer_of(provider: HeaderProvider | None) -> str | None:
    """The token of a provider's ``Authorization: Bearer`` header (None for none), for
    backends that take the token itself rather than headers."""
    if provider is None:
        return None
    header = (await provider()).get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token if scheme.lower() == "bearer" and token else None
