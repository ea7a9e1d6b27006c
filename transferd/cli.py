"""The ``transferd`` command: run a node or a worker, and talk to a node's REST API.

Client commands (submit, status, watch, cancel, retry, ls, files) go through
``transferd.client`` and read the node's URL and a bearer token from
``TRANSFERD_URL`` / ``TRANSFERD_TOKEN`` or ``--url`` / ``--token``.  Heavy
imports (the node, the workers, rich) happen inside the commands that need
them, so ``transferd --help`` and the client commands start fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from transferd import __version__
from transferd.client import Client, ClientError, Unreachable

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

EXIT_OK = 0  # done; for watch: the job FINISHED
EXIT_FAILURE = 1  # anything else that went wrong
EXIT_USAGE = 2  # bad command line, bad manifest, missing setting, request rejected as invalid
EXIT_JOB_FAILED = 3  # watch: the job ended FINISHEDDIRTY, FAILED, CANCELED or EXPIRED
EXIT_UNREACHABLE = 4  # no answer from the node
EXIT_AUTH = 5  # the node refused the credential (401) or the action (403)
EXIT_NOT_FOUND = 6  # no such job (or not visible to this tenant)
EXIT_INTERRUPTED = 130  # Ctrl-C

ENV_URL = "TRANSFERD_URL"
ENV_TOKEN = "TRANSFERD_TOKEN"
ENV_REDIS_URL = "TRANSFERD_REDIS_URL"

JOB_TERMINAL = frozenset({"FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED", "EXPIRED"})
FILE_STATES = ("SUBMITTED", "ACTIVE", "FINISHED", "FAILED", "CANCELED")
JOB_STATES = ("AWAITING_ACCEPTANCE", "SUBMITTED", "ACTIVE", *JOB_TERMINAL)
MANIFEST_FIELDS = ("source", "destination", "size", "checksum")
WATCH_MAX_FILE_BARS = 20
WATCH_UNREACHABLE_GRACE_S = 15.0


class UsageError(Exception):
    """A problem with what the user typed or gave us; exits with EXIT_USAGE."""


class ManifestError(UsageError):
    """A manifest line that cannot become a file spec; names the line and the field."""

    def __init__(
        self, name: str, line: int, field: str | None, message: str, *, unit: str = "line"
    ):
        where = f"{name} {unit} {line}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.field = field


# -- manifest ------------------------------------------------------------------------------


def parse_manifest(text: str | Iterable[str], name: str = "manifest") -> list[dict[str, Any]]:
    """File specs from a manifest: CSV with a header, or JSON lines (detected from line one).

    Columns / keys: ``source``, ``destination`` (required), ``size`` (bytes),
    ``checksum`` ("alg:hex" or "alg"); JSON lines may also carry ``metadata``.
    Blank lines and lines starting with ``#`` are skipped.
    """
    lines = text.splitlines() if isinstance(text, str) else [ln.rstrip("\r\n") for ln in text]
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    if not first:
        raise ManifestError(name, 1, None, "the manifest lists no files")
    specs = _parse_jsonl(lines, name) if first.startswith("{") else _parse_csv(lines, name)
    if not specs:
        raise ManifestError(name, len(lines), None, "the manifest lists no files")
    return specs


def _parse_jsonl(lines: list[str], name: str) -> list[dict[str, Any]]:
    allowed = {*MANIFEST_FIELDS, "metadata"}
    specs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(name, number, None, f"not valid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise ManifestError(name, number, None, "expected a JSON object")
        for key in row:
            if key not in allowed:
                raise ManifestError(name, number, key, f"unknown key (expected {_expected()})")
        specs.append(_spec(row, name, number))
    return specs


def _parse_csv(lines: list[str], name: str) -> list[dict[str, Any]]:
    # One record per physical line (no quoted newlines), so errors name the line exactly.
    numbered = [(n, next(csv.reader([ln]))) for n, ln in enumerate(lines, start=1)
                if ln.strip() and not ln.lstrip().startswith("#")]
    header_line, raw_header = numbered[0]
    header = [h.strip().lower() for h in raw_header]
    for column in header:
        if column not in MANIFEST_FIELDS:
            raise ManifestError(
                name, header_line, column or "(empty)",
                f"unknown column in the header (expected {_expected()})",
            )
    for column in ("source", "destination"):
        if column not in header:
            raise ManifestError(name, header_line, column, "the header has no such column")
    specs = []
    for number, values in numbered[1:]:
        if len(values) != len(header):
            raise ManifestError(
                name, number, None, f"{len(values)} fields, the header has {len(header)}"
            )
        row = {col: value.strip() for col, value in zip(header, values, strict=True)}
        if row.get("size") == "":
            del row["size"]
        if row.get("checksum") == "":
            del row["checksum"]
        specs.append(_spec(row, name, number))
    return specs


def _expected() -> str:
    return ", ".join(MANIFEST_FIELDS)


def _spec(row: dict[str, Any], name: str, number: int, unit: str = "line") -> dict[str, Any]:
    from workers.stream.checksums import parse_spec

    spec: dict[str, Any] = {}
    for key in ("source", "destination"):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(name, number, key, "missing (a URL is required)", unit=unit)
        if "://" not in value:
            raise ManifestError(name, number, key, f"not a URL: {value!r}", unit=unit)
        spec[key] = value.strip()
    size = row.get("size")
    if size is not None:
        if isinstance(size, str) and size.isdigit():
            size = int(size)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(name, number, "size", f"not a whole number of bytes: {size!r}")
        spec["size"] = size
    checksum = row.get("checksum")
    if checksum is not None:
        if not isinstance(checksum, str):
            raise ManifestError(name, number, "checksum", "expected \"alg:hex\" or \"alg\"")
        try:
            spec["checksum"] = str(parse_spec(checksum))
        except ValueError as err:
            raise ManifestError(name, number, "checksum", str(err)) from None
    metadata = row.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ManifestError(name, number, "metadata", "expected a JSON object")
        spec["metadata"] = metadata
    return spec


def _read_manifest(path: str) -> list[dict[str, Any]]:
    if path == "-":
        return parse_manifest(sys.stdin.read(), "stdin")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return parse_manifest(fh.read(), path)
    except OSError as err:
        raise UsageError(f"cannot read manifest {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"manifest {path} is not UTF-8 text") from None


# -- formatting ----------------------------------------------------------------------------


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2)


def _job_summary(job: dict[str, Any]) -> str:
    totals = job.get("totals") or {}
    by_state = totals.get("files_by_state") or {}
    counts = ", ".join(f"{n} {s.lower()}" for s, n in by_state.items() if n)
    rate = totals.get("rate_bps") or 0
    lines = [
        f"job {job.get('job_id')}  {job.get('state')}  (owner {job.get('owner')})",
        f"  files: {totals.get('files', 0)} ({counts or 'none'})",
        f"  bytes: {human_bytes(totals.get('bytes_done'))}"
        f" of {human_bytes(totals.get('bytes_total'))}"
        + (f" at {human_bytes(rate)}/s, ETA {human_duration(totals.get('eta_s'))}" if rate else ""),
    ]
    return "\n".join(lines)


def _file_line(f: dict[str, Any]) -> str:
    line = (f"{f.get('index')}\t{f.get('state')}\t{f.get('bytes_done', 0)}/{f.get('size')}"
            f"\t{f.get('attempts', 0)}\t{f.get('source')} -> {f.get('destination')}")
    if f.get("error_class"):
        line += f"\t[{f['error_class']}] {f.get('reason') or ''}"
    return line


# -- commands: node side -------------------------------------------------------------------


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


def _size(text: str) -> int:
    """A size like 64M or 1G (argparse type; the parser lives with the mover)."""
    from workers.stream.cp import parse_size

    return parse_size(text)


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

    import redis.asyncio

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
    client = redis.asyncio.Redis.from_url(redis_url)
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


# -- commands: client side -----------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    url = args.url or os.environ.get(ENV_URL)
    if not url:
        raise UsageError(f"no node URL: set {ENV_URL} or pass --url (e.g. http://127.0.0.1:8080)")
    token = args.token or os.environ.get(ENV_TOKEN)
    if not token:
        raise UsageError(
            f"no API token: set {ENV_TOKEN} or pass --token "
            "(create one with: transferd token create --tenant T --role submitter)"
        )
    try:
        return Client(url, token)
    except ValueError:
        raise UsageError(f"{ENV_URL} / --url is not an http(s) URL") from None


def cmd_submit(args: argparse.Namespace) -> int:
    files: list[dict[str, Any]] = []
    if args.pairs:
        if len(args.pairs) % 2:
            raise UsageError("give SOURCE DESTINATION pairs: the last source has no destination")
        rows = ({"source": s, "destination": d}
                for s, d in zip(args.pairs[::2], args.pairs[1::2], strict=True))
        files.extend(
            _spec(row, "SRC DST", i, unit="pair") for i, row in enumerate(rows, start=1)
        )
    if args.manifest:
        files.extend(_read_manifest(args.manifest))
    if not files:
        raise UsageError("nothing to transfer: give SOURCE DESTINATION pairs or --manifest FILE")
    if args.checksum:
        from workers.stream.checksums import parse_spec

        try:
            default = str(parse_spec(args.checksum))
        except ValueError as err:
            raise UsageError(f"--checksum: {err}") from None
        files = [f if "checksum" in f else {**f, "checksum": default} for f in files]
    params = {
        key: value for key, value in (
            ("backend", args.backend), ("verify_checksum", args.verify),
            ("overwrite", True if args.overwrite else None), ("priority", args.priority),
            ("max_retries", args.max_retries), ("retry_delay_s", args.retry_delay),
            ("activity", args.activity), ("deadline", args.deadline),
        ) if value is not None
    }
    client = _client(args)
    answer = client.submit(files, params or None, idempotency_key=args.idempotency_key)
    print(_dumps(answer) if args.json else answer["job_id"])
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    job = _client(args).job(args.job)
    print(_dumps(job) if args.json else _job_summary(job))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job)
    print(_dumps(job) if args.json else f"job {job.get('job_id')}: {job.get('state')}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    answer = _client(args).retry(args.job)
    if args.json:
        print(_dumps(answer))
    else:
        print(f"job {answer.get('job_id')}: {answer.get('state')} "
              f"({answer.get('retried', 0)} files retried)")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    client = _client(args)
    jobs = []
    for job in client.iter_jobs(state=args.state, owner=args.owner):
        jobs.append(job)
        if len(jobs) >= args.limit:
            break
    if args.json:
        print(_dumps({"jobs": jobs}))
        return EXIT_OK
    for job in jobs:
        totals = job.get("totals") or {}
        done = (totals.get("files_by_state") or {}).get("FINISHED", 0)
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.get("created_at") or 0))
        print(f"{job.get('job_id')}\t{job.get('state')}\t{done}/{totals.get('files', 0)} files"
              f"\t{human_bytes(totals.get('bytes_done'))}/{human_bytes(totals.get('bytes_total'))}"
              f"\t{job.get('owner')}\t{created}")
    return EXIT_OK


def cmd_files(args: argparse.Namespace) -> int:
    for f in _client(args).iter_files(args.job, state=args.state):
        print(json.dumps(f) if args.json else _file_line(f))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    client = _client(args)
    return watch(client, args.job, interval_s=args.interval, out=sys.stdout)


def watch(client: Client, job_id: str, *, interval_s: float = 0.5, out: TextIO) -> int:
    """Progress bars for a job and its ACTIVE files until the job is terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            rate = task.fields.get("rate_bps") or 0
            return Text(f"{human_bytes(rate)}/s" if rate else "-", style="progress.data.speed")

    class EtaColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            rate = task.fields.get("rate_bps") or 0
            left = (task.total or 0) - task.completed
            eta = left / rate if rate and left > 0 else None
            return Text(f"ETA {human_duration(eta)}", style="progress.remaining")

    class SizeColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            total = human_bytes(task.total) if task.total else "?"
            return Text(f"{human_bytes(task.completed)}/{total}", style="progress.download")

    console = Console(file=out)
    columns = (
        TextColumn("{task.description}"), BarColumn(), SizeColumn(), RateColumn(), EtaColumn()
    )
    bars: dict[str, Any] = {}
    last_answer = time.monotonic()
    with Progress(*columns, console=console, auto_refresh=False) as progress:
        job_bar = progress.add_task(f"job {job_id}", total=None)
        while True:
            try:
                job = client.job(job_id)
                active = client.files(job_id, state="ACTIVE", limit=WATCH_MAX_FILE_BARS)["files"]
                last_answer = time.monotonic()
            except Unreachable:
                # A node restart should not end the watch; a node that stays away does.
                if time.monotonic() - last_answer > WATCH_UNREACHABLE_GRACE_S:
                    raise
                time.sleep(interval_s)
                continue
            totals = job.get("totals") or {}
            by_state = totals.get("files_by_state") or {}
            short_id = job_id if len(job_id) <= 12 else job_id[:8] + "…"
            described = (f"job {short_id} {job.get('state')} "
                         f"{by_state.get('FINISHED', 0)}/{totals.get('files', 0)} files")
            progress.update(
                job_bar, description=described, total=totals.get("bytes_total") or None,
                completed=totals.get("bytes_done") or 0, rate_bps=totals.get("rate_bps"),
            )
            seen = set()
            for f in active:
                fid = f["file_id"]
                seen.add(fid)
                label = "  " + (f.get("destination") or fid).rsplit("/", 1)[-1][:30]
                if fid not in bars:
                    bars[fid] = progress.add_task(label, total=f.get("size"))
                progress.update(bars[fid], total=f.get("size"), completed=f.get("bytes_done") or 0,
                                rate_bps=f.get("rate_bps"))
            for fid in [fid for fid in bars if fid not in seen]:
                progress.remove_task(bars.pop(fid))
            progress.refresh()
            if job.get("state") in JOB_TERMINAL:
                break
            time.sleep(interval_s)
    console.print(_job_summary(job))
    return EXIT_OK if job.get("state") == "FINISHED" else EXIT_JOB_FAILED


def cmd_top(args: argparse.Namespace) -> int:
    from transferd.top import run_top

    return run_top(_client(args), interval_s=args.interval, once=args.once)


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


def _fail(message: str, code: int) -> int:
    print(f"transferd: {message}", file=sys.stderr)
    return code


def _exit_code(err: ClientError) -> int:
    if isinstance(err, Unreachable):
        return EXIT_UNREACHABLE
    if err.status in (401, 403):
        return EXIT_AUTH
    if err.status == 404:
        return EXIT_NOT_FOUND
    if err.status in (400, 409, 413, 422):
        return EXIT_USAGE
    return EXIT_FAILURE


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
    try:
        code: int = func(args)
        return code
    except UsageError as err:
        return _fail(str(err), EXIT_USAGE)
    except Unreachable as err:
        return _fail(str(err), EXIT_UNREACHABLE)
    except ClientError as err:
        return _fail(f"{err} (HTTP {err.status}).", _exit_code(err))
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # `transferd files JOB | head`: the reader went away; say nothing.
        _silence_stdout()
        return EXIT_OK


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())

