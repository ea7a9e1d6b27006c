"""Node-side commands of ``transferd``: serve, worker and token create.

They run in this process (a node, worker threads, a Redis connection), so
their heavy imports happen inside each command to keep ``transferd --help``
and the client commands fast.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from transferd.cli_exit import EXIT_OK, UsageError
from transferd.client import Unreachable

__all__ = ["ENV_REDIS_URL", "cmd_serve", "cmd_token_create", "cmd_worker"]

ENV_REDIS_URL = "TRANSFERD_REDIS_URL"


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from policies.policy import PolicyError
    from transferd.config import ConfigError, load_config
    from transferd.node import PolicyHolder, serve

    overrides = {
        "host": args.host, "port": args.port, "state_dir": args.state_dir,
        "redis_url": args.redis_url, "workers": args.workers,
        "allow_roots": [os.path.abspath(p) for p in args.allow_root] if args.allow_root else None,
    }
    try:
        config = load_config(args.config, overrides)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    try:
        policy = PolicyHolder(os.path.abspath(args.policy) if args.policy else None)
    except PolicyError as err:
        raise UsageError(str(err)) from None
    # SIGINT is handled by the node itself; this covers a Ctrl-C during start-up.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, policy))
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.runner import run_worker
    from workers.stream.cp import chunk_policy

    redis_url = args.redis_url or os.environ.get(ENV_REDIS_URL)
    if not redis_url:
        raise UsageError(f"no Redis URL: pass --redis-url or set {ENV_REDIS_URL}")
    policy = chunk_policy(args.streams, args.chunk_size)
    return run_worker(redis_url, args.threads, lease_s=args.lease_s, chunk_policy=policy)


def cmd_token_create(args: argparse.Namespace) -> int:
    import asyncio

    asyncio.run(_token_create(args))
    return EXIT_OK


async def _token_create(args: argparse.Namespace) -> None:
    import inspect

    import redis

    from transferd import redis_conn
    from transferd.auth import create_token
    from transferd.embedded import EmbeddedRedis, EmbeddedRedisError
    from transferd.models import Role

    embedded: EmbeddedRedis | None = None
    redis_url = args.redis_url or (None if args.state_dir else os.environ.get(ENV_REDIS_URL))
    if redis_url is None:
        state_dir = args.state_dir
        if state_dir is None:
            from transferd.config import default_state_dir

            state_dir = default_state_dir()
        # Joins the running node's redis-server, or (no node running) starts it just
        # long enough to store the token: the append-only file keeps it for the node.
        embedded = EmbeddedRedis(state_dir)
        try:
            await embedded.__aenter__()
        except EmbeddedRedisError as err:
            raise UsageError(str(err)) from None
        redis_url = embedded.url
    client = redis_conn.connect(redis_url)
    try:
        result: Any = create_token(client, args.tenant, Role(args.role), args.name)
        token = await result if inspect.isawaitable(result) else result
    except ValueError as err:  # a tenant name or role the store refuses
        raise UsageError(str(err)) from None
    except (redis.ConnectionError, redis.TimeoutError) as err:
        raise Unreachable(0, {"detail": f"cannot reach Redis: {err}"}) from None
    finally:
        await client.aclose()
        if embedded is not None:
            await embedded.__aexit__(None, None, None)
    print(token)
