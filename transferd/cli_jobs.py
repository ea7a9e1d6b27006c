"""The job commands of ``transferd``: submit, status, watch, cancel, retry, ls, files, top.

They go through ``transferd.client`` and read the node's URL and a bearer
token from ``TRANSFERD_URL`` / ``TRANSFERD_TOKEN`` or ``--url`` / ``--token``
(``make_client``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

from transferd.cli_exit import EXIT_JOB_FAILED, EXIT_OK, UsageError
from transferd.cli_manifest import file_spec, read_manifest
from transferd.client import Client, Unreachable

__all__ = [
    "ENV_TOKEN",
    "ENV_URL",
    "FILE_STATES",
    "JOB_STATES",
    "cmd_cancel",
    "cmd_files",
    "cmd_ls",
    "cmd_retry",
    "cmd_status",
    "cmd_submit",
    "cmd_top",
    "cmd_watch",
    "human_bytes",
    "human_duration",
    "make_client",
    "watch",
]

ENV_URL = "TRANSFERD_URL"
ENV_TOKEN = "TRANSFERD_TOKEN"

JOB_TERMINAL = frozenset({"FINISHED", "FINISHEDDIRTY", "FAILED", "CANCELED", "EXPIRED"})
FILE_STATES = ("SUBMITTED", "ACTIVE", "FINISHED", "FAILED", "CANCELED")
JOB_STATES = ("AWAITING_ACCEPTANCE", "SUBMITTED", "ACTIVE", *JOB_TERMINAL)
WATCH_MAX_FILE_BARS = 20
WATCH_UNREACHABLE_GRACE_S = 15.0


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

# -- commands ------------------------------------------------------------------------------


def make_client(args: argparse.Namespace) -> Client:
    """A client for the node named by ``--url`` / ``--token`` or the environment."""
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
            file_spec(row, "SRC DST", i, unit="pair") for i, row in enumerate(rows, start=1)
        )
    if args.manifest:
        files.extend(read_manifest(args.manifest))
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
    client = make_client(args)
    answer = client.submit(files, params or None, idempotency_key=args.idempotency_key)
    print(_dumps(answer) if args.json else answer["job_id"])
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    job = make_client(args).job(args.job)
    print(_dumps(job) if args.json else _job_summary(job))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    job = make_client(args).cancel(args.job)
    print(_dumps(job) if args.json else f"job {job.get('job_id')}: {job.get('state')}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    answer = make_client(args).retry(args.job)
    if args.json:
        print(_dumps(answer))
    else:
        print(f"job {answer.get('job_id')}: {answer.get('state')} "
              f"({answer.get('retried', 0)} files retried)")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    client = make_client(args)
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
    for f in make_client(args).iter_files(args.job, state=args.state):
        print(json.dumps(f) if args.json else _file_line(f))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    client = make_client(args)
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

    return run_top(make_client(args), interval_s=args.interval, once=args.once)

