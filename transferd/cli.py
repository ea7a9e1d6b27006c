"""The ``transferd`` command: its parser and dispatch; the commands live by concept.

    transferd.cli_node      serve, worker, token create (run in this process)
    transferd.cli_jobs      submit, status, watch, cancel, retry, ls, files, top
    transferd.cli_manifest  the CSV / JSON-lines manifests ``submit`` reads
    transferd.cli_exit      the named exit codes and what maps to them
    transferd.ocm.cli       shares, share, invite, contacts
    workers.stream.cp       cp (a one-shot copy, no node)

Heavy imports (the node, the workers, rich) happen inside the commands that
need them, so ``transferd --help`` and the client commands start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from transferd import __version__
from transferd.cli_exit import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
    run_command,
)
from transferd.cli_jobs import (
    ENV_TOKEN,
    ENV_URL,
    FILE_STATES,
    JOB_STATES,
    cmd_cancel,
    cmd_files,
    cmd_ls,
    cmd_retry,
    cmd_status,
    cmd_submit,
    cmd_top,
    cmd_watch,
)
from transferd.cli_manifest import ManifestError, parse_manifest
from transferd.cli_node import ENV_REDIS_URL, cmd_serve, cmd_token_create, cmd_worker

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "ManifestError",
    "main",
    "parse_manifest",
]


def _size(text: str) -> int:
    """A size like 64M or 1G (argparse type; the parser lives with the mover)."""
    from workers.stream.cp import parse_size

    return parse_size(text)


def cmd_cp_unavailable(args: argparse.Namespace) -> int:
    raise UsageError("cp is not available: the streaming mover (workers.stream.cp) is missing")


# -- parser --------------------------------------------------------------------------------

EXAMPLES = """\
examples:
  scripts/setup && examples/lofar/run           # install, then the LOFAR pipeline end to end
  transferd serve --state-dir ./state --port 8080 --allow-root /data
  transferd token create --tenant lofar --role submitter --state-dir ./state
  export TRANSFERD_URL=http://127.0.0.1:8080 TRANSFERD_TOKEN=...
  transferd submit https://archive.example.org/L1.tar file:///data/L1.tar --checksum adler32
  transferd submit --manifest subbands.csv --priority 4 --idempotency-key run-42
  transferd watch JOB_ID
  transferd status JOB_ID --json
  transferd files JOB_ID --state FAILED && transferd retry JOB_ID

exit codes: 0 ok, 1 failure, 2 usage or invalid request, 3 job did not finish cleanly
(watch), 4 node unreachable, 5 credential or role refused, 6 no such job, 130 interrupted
"""

MANIFEST_HELP = """\
manifest formats (detected from the first line; '-' reads standard input):
  CSV with a header:   source,destination,size,checksum
                       https://a.org/x.tar,file:///data/x.tar,1048576,adler32:0a1b2c3d
  JSON lines:          {"source": "...", "destination": "...", "size": 1048576,
                        "checksum": "adler32:0a1b2c3d", "metadata": {...}}
size and checksum are optional; checksum is "alg:hex" to verify or "alg" to record.
"""


def _client_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("node")
    group.add_argument("--url", help=f"the node's URL (default: ${ENV_URL})")
    group.add_argument("--token", help=f"API token or OIDC JWT (default: ${ENV_TOKEN})")
    return parent


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="transferd", formatter_class=formatter,
        description="Large-dataset transfer orchestrator: run a node, submit and follow jobs.",
        epilog=EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"transferd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    node = _client_options()

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str, *,
            client: bool = True, epilog: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                           parents=[node] if client else [], formatter_class=formatter)
        p.set_defaults(func=func)
        return p

    p = add("serve", cmd_serve, "run a node: REST API, scheduler and in-process workers",
            client=False, epilog="example:\n  transferd serve --port 0 --state-dir ./state "
            "--allow-root /data\n\nPrints 'transferd listening on URL' once ready.")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on; 0 picks a free one (default 8080)")
    p.add_argument("--state-dir", help="embedded Redis socket and append-only file live here")
    p.add_argument("--redis-url", help="join a shared Redis instead of starting an embedded one")
    p.add_argument("--workers", type=int, help="in-process worker threads (0: none; default 4)")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--policy", metavar="FILE",
                   help="policy file overriding policies/default.toml (optimizer, limits, "
                   "fair share, retry, chunking, routing); SIGHUP re-reads it")
    p.add_argument("--allow-root", action="append", metavar="DIR",
                   help="a directory every tenant may use in file:// URLs (repeatable)")

    p = add("worker", cmd_worker, "run worker threads that move files for a shared Redis",
            client=False, epilog="example:\n  transferd worker --redis-url redis://redis:6379/0 "
            "--threads 8")
    p.add_argument("--redis-url", help=f"the shared Redis (default: ${ENV_REDIS_URL})")
    p.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    p.add_argument("--lease-s", type=float, default=30.0, metavar="SECONDS",
                   help="how long a claimed file stays ours without a heartbeat (default 30)")
    p.add_argument("--chunk-size", type=_size, default=None, metavar="SIZE",
                   help="chunk size for the streaming mover, e.g. 16M, 64M (default 64M)")
    p.add_argument("--streams", type=int, default=None, metavar="N",
                   help="parallel ranged streams per file (default 4)")

    token = sub.add_parser("token", help="manage API tokens", description="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    p = token_sub.add_parser(
        "create", help="create an API token and print it (only it)",
        description="Create an API token in the node's store and print only the token.",
        epilog="example:\n  transferd token create --tenant lofar --role submitter "
        "--state-dir ./state", formatter_class=formatter)
    p.set_defaults(func=cmd_token_create)
    p.add_argument("--tenant", required=True)
    p.add_argument("--role", required=True, choices=("reader", "submitter", "operator", "admin"))
    p.add_argument("--name", default="cli", help="a label to recognise the token by")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--state-dir", help="the node's state directory (embedded Redis)")
    where.add_argument("--redis-url", help=f"the node's shared Redis (default: ${ENV_REDIS_URL})")

    p = add("submit", cmd_submit, "submit a transfer job; prints its id",
            epilog=MANIFEST_HELP)
    p.add_argument("pairs", nargs="*", metavar="SRC DST", help="source and destination URLs")
    p.add_argument("--manifest", metavar="FILE", help="CSV or JSON-lines list of files")
    p.add_argument("--checksum", metavar="ALG[:HEX]",
                   help="checksum for files that give none, e.g. adler32")
    p.add_argument("--priority", type=int, choices=range(1, 6), metavar="1-5",
                   help="5 is most urgent")
    p.add_argument("--backend", choices=("auto", "stream", "rclone", "fts", "rucio"))
    p.add_argument("--verify", choices=("both", "source", "target", "none"),
                   help="which checksums to compare")
    p.add_argument("--overwrite", action="store_true", help="replace existing destinations")
    p.add_argument("--max-retries", type=int)
    p.add_argument("--retry-delay", type=float, metavar="SECONDS")
    p.add_argument("--activity")
    p.add_argument("--deadline", metavar="RFC3339")
    p.add_argument("--idempotency-key", metavar="KEY",
                   help="resubmitting with the same key returns the same job")
    p.add_argument("--json", action="store_true", help="print the whole answer")

    for name, func, help_ in (
        ("status", cmd_status, "show a job's state and totals"),
        ("cancel", cmd_cancel, "cancel a job's unfinished files"),
        ("retry", cmd_retry, "retry a job's failed and canceled files"),
    ):
        p = add(name, func, help_)
        p.add_argument("job", metavar="JOB")
        p.add_argument("--json", action="store_true", help="print the API's JSON answer")

    p = add("watch", cmd_watch, "progress bars for a job until it ends",
            epilog="exits 0 when the job FINISHED, 3 when it ended otherwise")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--interval", type=float, default=0.5, metavar="SECONDS")

    p = add("ls", cmd_ls, "list jobs")
    p.add_argument("--state", choices=JOB_STATES)
    p.add_argument("--owner", help="tenant (operators see every tenant)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")

    p = add("files", cmd_files, "list a job's files (tab-separated, or JSON lines)")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--state", choices=FILE_STATES)
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    from transferd.ocm.cli import add_commands

    add_commands(sub, node, formatter)

    p = add("top", cmd_top, "live overview in the terminal: queues, transfers, failures",
            epilog="example:\n  transferd top --interval 2\n  transferd top --once   # one frame")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS")
    p.add_argument("--once", action="store_true", help="print one frame and exit")

    cp = _cp_module()
    if cp is None:
        sub.add_parser("cp", help="one-shot copy (unavailable)").set_defaults(
            func=cmd_cp_unavailable)
    else:
        cp.build_parser(sub)
    return parser


def _cp_module() -> Any:
    """workers.stream.cp, which adds the ``cp`` command, or None when it is not installed."""
    import importlib

    try:
        return importlib.import_module("workers.stream.cp")
    except ModuleNotFoundError as err:
        if err.name != "workers.stream.cp":
            raise
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``transferd`` command; returns its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    func = getattr(args, "func", None)
    if func is None:
        if args.command == "cp":
            func = _cp_module().run
        else:
            parser.print_usage(sys.stderr)
            return EXIT_USAGE
    return run_command(func, args)
