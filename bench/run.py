"""Benchmark transferd's streaming mover against curl, aria2c and rclone on one nginx, in one run.

Examples:
    .venv/bin/python bench/run.py --quick            # 256 MiB + 200 files, 1 run: a smoke check
    .venv/bin/python bench/run.py                    # 4 GiB + 2,000 x 1 MiB, 3 runs each
    .venv/bin/python bench/run.py --runs 5 --only transferd,aria2c

Writes bench/results/<timestamp>.json and bench/results/latest.md (see bench/README.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import report
from dataset import Dataset, make_dataset, parse_size
from httpd import serving
from measure import Completed, drop_page_cache, rss_exact, run_measured, sync_s
from resume import measure_resume, plan_for
from tools import (
    BIG,
    TOOLS,
    Contender,
    Context,
    VerifyError,
    contenders,
    find_rclone,
    find_transferd,
    write_inputs,
)

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # some contender failed a run: the table says which
EXIT_USAGE = 2
_MIN_TIMEOUT_S = 60.0
_SLOWEST_BYTES_PER_S = 20e6  # a run slower than this is broken, not slow


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="256M big file, 200 small files, 1 run")
    p.add_argument("--runs", type=int, help="runs per contender (default 3; 1 with --quick)")
    p.add_argument("--big-size", help="big file size, e.g. 4G (default 4G; 256M with --quick)")
    p.add_argument("--small-count", type=int, help="1 MiB files (default 2000; 200 with --quick)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="parent of the temporary data and destination dirs (default: system temp dir)",
    )
    p.add_argument(
        "--streams",
        default="1,8",
        help="extra transferd big-file rows with --streams N, comma-separated ('' for none)",
    )
    p.add_argument("--only", default="", help="comma-separated tools: transferd,curl,aria2c,rclone")
    p.add_argument("--transferd", default=None, help="argv prefix for 'transferd cp' (shell words)")
    p.add_argument("--no-transferd", action="store_true", help="peers only")
    p.add_argument("--no-resume", action="store_true", help="skip the kill -9 and resume check")
    p.add_argument("--keep-cache", action="store_true", help="do not drop the page cache")
    args = p.parse_args(argv)
    args.runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    args.big_bytes = parse_size(args.big_size or ("256M" if args.quick else "4G"))
    if args.small_count is None:
        args.small_count = 200 if args.quick else 2000
    if args.runs < 1 or args.small_count < 0:
        p.error("--runs must be ≥ 1 and --small-count ≥ 0")
    return args


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _timeout_s(nbytes: int) -> float:
    return max(_MIN_TIMEOUT_S, nbytes / _SLOWEST_BYTES_PER_S)


def _one_run(ctx: Context, c: Contender, run_index: int, drop_cache: bool) -> report.RunRecord:
    shutil.rmtree(ctx.dest, ignore_errors=True)
    ctx.dest.mkdir(parents=True)
    if drop_cache:
        drop_page_cache()
    else:
        os.sync()
    big = c.case == BIG
    nbytes = ctx.dataset.big_bytes if big else ctx.dataset.small_total_bytes
    files = 1 if big else ctx.dataset.small_count
    done: Completed = run_measured(c.command(ctx), timeout_s=_timeout_s(nbytes))
    flush_s = sync_s()
    error = done.failure()
    if error is None:
        try:
            c.verify(ctx, done)
        except VerifyError as e:
            error = f"verification failed: {e}"
    record = report.RunRecord(
        label=c.label,
        tool=c.tool,
        case=c.case,
        primary=c.primary,
        run_index=run_index,
        ok=error is None,
        wall_s=done.wall_s,
        sync_s=flush_s,
        peak_rss_bytes=done.peak_rss_bytes,
        bytes_moved=nbytes,
        files=files,
        error=error,
    )
    status = "ok" if error is None else f"FAILED: {error}"
    _log(
        f"  run {run_index + 1} {c.case:5} {c.label:40} {done.wall_s:7.2f} s "
        f"(+sync {flush_s:5.2f} s) {nbytes / done.wall_s / 1e6:7.0f} MB/s "
        f"{done.peak_rss_bytes / 1e6:6.0f} MB  {status}"
    )
    return record


def _meta(
    args: argparse.Namespace, ds: Dataset, ctx: Context, cache_dropped: bool
) -> dict[str, Any]:
    return {
        "timestamp": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv,
        "quick": args.quick,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "platform": platform.platform(),
        "cache_dropped": cache_dropped,
        "rss_exact": rss_exact(),
        "big_bytes": ds.big_bytes,
        "big_adler32": ds.big_adler32,
        "small_count": ds.small_count,
        "small_file_bytes": ds.small_file_bytes,
        "big_desc": f"big file {ds.big_bytes / 2**20:,.0f} MiB",
        "small_desc": f"{ds.small_count:,} × {ds.small_file_bytes // 2**20} MiB files",
        "transferd": ctx.transferd,
        "versions": {
            "nginx": _version(["nginx", "-v"]),
            "curl": _version(["curl", "--version"]),
            "aria2c": _version(["aria2c", "--version"]),
            "rclone": _version([ctx.rclone, "version"]),
            "python": sys.version.split()[0],
        },
        "notes": [],
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    for binary in ("nginx", "curl", "aria2c"):
        if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
            _log(f"{binary} not found (apt-get install {binary})")
            return EXIT_USAGE
    transferd = None
    if not args.no_transferd:
        transferd = shlex.split(args.transferd) if args.transferd else find_transferd()
    streams = [int(s) for s in args.streams.split(",") if s.strip()]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only - TOOLS:
        _log(f"--only: unknown tool(s) {sorted(only - TOOLS)}; choose from {sorted(TOOLS)}")
        return EXIT_USAGE

    tmp = Path(tempfile.mkdtemp(prefix="transferd-bench-", dir=args.workdir))
    try:
        started = time.monotonic()
        ds = make_dataset(tmp / "data", args.big_bytes, args.small_count)
        _log(f"data set written in {time.monotonic() - started:.1f} s under {tmp}")
        cache_dropped = not args.keep_cache and drop_page_cache()
        _log(f"page cache {'dropped' if cache_dropped else 'NOT dropped'} before each run")
        with serving(ds.root, tmp / "nginx") as server:
            ctx = Context(ds, server.url, tmp / "dest", tmp / "work", find_rclone(), transferd)
            write_inputs(ctx)
            todo = [c for c in contenders(ctx, streams) if not only or c.tool in only]
            meta = _meta(args, ds, ctx, cache_dropped)
            if not rss_exact():
                meta["notes"].append(
                    "peak RSS is an upper bound: /usr/bin/time missing (apt-get install time)."
                )
            if transferd is None:
                meta["notes"].append(
                    "transferd not run (no workers/stream/cp.py or --no-transferd)."
                )
            records = [_one_run(ctx, c, i, cache_dropped) for i in range(args.runs) for c in todo]
            resume = None
            if transferd is not None and not args.no_resume and (not only or "transferd" in only):
                shutil.rmtree(ctx.dest, ignore_errors=True)
                ctx.dest.mkdir(parents=True)
                if cache_dropped:
                    drop_page_cache()
                resume = measure_resume(
                    ctx, server, plan_for(ds.big_bytes, _timeout_s(ds.big_bytes))
                )
                _log(f"  resume check: {resume.get('error') or 'ok'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = report.summarise(records)
    verdicts = report.verdicts(rows, resume, ds.big_bytes)
    meta["resume"] = resume
    meta["loadavg_end"] = os.getloadavg()
    text = report.markdown(rows, verdicts, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    (args.out / f"{stamp}.json").write_text(
        json.dumps(report.as_json(records, rows, verdicts, meta), indent=2) + "\n"
    )
    (args.out / "latest.md").write_text(text)
    print(text)
    return EXIT_OK if all(r.ok for r in records) else EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
