"""Turning runs into rows, ratios and target verdicts; Markdown and JSON out.

Pure functions over plain records, so the arithmetic can be read (and tested)
without running anything.  MB = 10^6 bytes.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

MB = 1_000_000
RSS_TARGET_BYTES = 150 * 1024 * 1024


@dataclass(frozen=True)
class RunRecord:
    label: str
    tool: str
    case: str
    primary: bool
    run_index: int
    ok: bool
    wall_s: float
    sync_s: float
    peak_rss_bytes: int
    bytes_moved: int
    files: int
    error: str | None = None


@dataclass(frozen=True)
class Row:
    label: str
    tool: str
    case: str
    primary: bool
    runs_ok: int
    runs_failed: int
    median_s: float | None
    min_s: float | None
    max_s: float | None
    mb_per_s: float | None
    mb_per_s_with_sync: float | None
    median_with_sync_s: float | None  # process time plus the sync of what it left dirty
    files_per_s: float | None
    peak_rss_bytes: int | None
    ratio: float | None  # transferd throughput / this row's; >1 means transferd is faster
    errors: list[str]


@dataclass(frozen=True)
class Verdict:
    target: str
    status: str  # PASS, MISS, n/a
    detail: str


def summarise(records: list[RunRecord]) -> list[Row]:
    keys: list[tuple[str, str]] = []
    for r in records:
        if (r.label, r.case) not in keys:
            keys.append((r.label, r.case))
    rows = [_row([r for r in records if (r.label, r.case) == key]) for key in keys]
    return [_with_ratio(row, rows) for row in rows]


def _row(runs: list[RunRecord]) -> Row:
    first = runs[0]
    ok = [r for r in runs if r.ok]
    errors = [f"run {r.run_index + 1}: {r.error}" for r in runs if not r.ok]
    if not ok:
        return Row(
            first.label,
            first.tool,
            first.case,
            first.primary,
            0,
            len(runs),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            errors,
        )
    walls = [r.wall_s for r in ok]
    median_s = statistics.median(walls)
    with_sync_s = statistics.median(r.wall_s + r.sync_s for r in ok)
    return Row(
        label=first.label,
        tool=first.tool,
        case=first.case,
        primary=first.primary,
        runs_ok=len(ok),
        runs_failed=len(runs) - len(ok),
        median_s=median_s,
        min_s=min(walls),
        max_s=max(walls),
        mb_per_s=first.bytes_moved / median_s / MB,
        mb_per_s_with_sync=first.bytes_moved / with_sync_s / MB,
        median_with_sync_s=with_sync_s,
        files_per_s=first.files / median_s if first.files > 1 else None,
        peak_rss_bytes=max(r.peak_rss_bytes for r in ok),
        ratio=None,
        errors=errors,
    )


def primary_transferd(rows: list[Row], case: str) -> Row | None:
    return next((r for r in rows if r.tool == "transferd" and r.primary and r.case == case), None)


def _with_ratio(row: Row, rows: list[Row]) -> Row:
    ours = primary_transferd(rows, row.case)
    if row.tool == "transferd" or ours is None or not ours.median_s or not row.median_s:
        return row
    return Row(**{**asdict(row), "ratio": row.median_s / ours.median_s})


def _best_peer(rows: list[Row], case: str, tools: tuple[str, ...],
               durable: bool = False) -> Row | None:
    peers = [r for r in rows if r.case == case and r.tool in tools and r.median_s]
    if durable:
        return min(peers, key=lambda r: r.median_with_sync_s or 0.0, default=None)
    return min(peers, key=lambda r: r.median_s or 0.0, default=None)


def _peer(rows: list[Row], case: str, tool: str) -> Row | None:
    return next((r for r in rows if r.case == case and r.tool == tool and r.primary), None)


def _ratio_verdict(target: str, ours: Row | None, peer: Row | None, need: float,
                   durable: bool = False) -> Verdict:
    """``durable``: compare times to data on disk (each run's time plus its sync)."""
    if ours is None or not ours.median_s:
        why = "transferd not run" if ours is None else "transferd failed every run"
        return Verdict(target, "n/a", why)
    if peer is None or not peer.median_s:
        return Verdict(target, "n/a", "peer has no successful run")
    if durable and ours.median_with_sync_s and peer.median_with_sync_s:
        ratio = peer.median_with_sync_s / ours.median_with_sync_s
    else:
        ratio = peer.median_s / ours.median_s
    status = "PASS" if ratio >= need else "MISS"
    short = "" if status == "PASS" else f", short by {(1 - ratio / need) * 100:.0f}%"
    return Verdict(target, status, f"{ratio:.2f}× {peer.label} (need ≥ {need:g}×{short})")


def verdicts(rows: list[Row], resume: dict[str, Any] | None, big_bytes: int) -> list[Verdict]:
    big_ours, small_ours = primary_transferd(rows, "big"), primary_transferd(rows, "small")
    out = [
        _ratio_verdict(
            "big file: ≥ 1.0× best of curl, aria2c, rclone",
            big_ours,
            _best_peer(rows, "big", ("curl", "aria2c", "rclone")),
            1.0,
        ),
        _ratio_verdict(
            "small files: ≥ 5× rclone files/s", small_ours, _peer(rows, "small", "rclone"), 5.0
        ),
        _ratio_verdict(
            "small files: ≥ 1.0× aria2c -j16 files/s",
            small_ours,
            _peer(rows, "small", "aria2c"),
            1.0,
        ),
        # transferd fsyncs before its rename; the peers exit with their data still
        # dirty in the page cache.  Charged the same write-back, the same targets:
        _ratio_verdict(
            "big file, to durable data (+sync): ≥ 1.0× best of curl, aria2c, rclone",
            big_ours,
            _best_peer(rows, "big", ("curl", "aria2c", "rclone"), durable=True),
            1.0,
            durable=True,
        ),
        _ratio_verdict(
            "small files, to durable data (+sync): ≥ 1.0× aria2c -j16 files/s",
            small_ours,
            _peer(rows, "small", "aria2c"),
            1.0,
            durable=True,
        ),
    ]
    rss_target = f"peak RSS < 150 MiB (big file, {big_bytes / 2**30:g} GiB)"
    if big_ours is None or big_ours.peak_rss_bytes is None:
        out.append(Verdict(rss_target, "n/a", "transferd has no successful big-file run"))
    else:
        rss = big_ours.peak_rss_bytes
        status = "PASS" if rss < RSS_TARGET_BYTES else "MISS"
        out.append(Verdict(rss_target, status, f"{rss / 2**20:.0f} MiB"))
    out.append(_resume_verdict(resume))
    return out


def _resume_verdict(resume: dict[str, Any] | None) -> Verdict:
    target = "resume waste ≤ one chunk per stream"
    if not resume:
        return Verdict(target, "n/a", "not measured (no transferd, or --no-resume)")
    if resume.get("error"):
        return Verdict(target, "n/a", str(resume["error"]))
    waste, allowed = resume["waste_bytes"], resume["allowed_bytes"]
    status = "PASS" if waste <= allowed else "MISS"
    return Verdict(
        target,
        status,
        f"{waste / 2**20:.1f} MiB wasted, allowed {allowed / 2**20:.0f} MiB "
        f"({resume['streams']} streams × {resume['chunk_bytes'] / 2**20:.0f} MiB; "
        f"killed at {resume['killed_at_s']:.1f} s)",
    )


def _load(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(rows: list[Row], verdict_list: list[Verdict], meta: dict[str, Any]) -> str:
    lines = [
        f"### transferd benchmark — {meta['timestamp']}",
        "",
        f"{meta['big_desc']}; {meta['small_desc']}; {meta['runs']} run(s) each on "
        f"{meta['cpus']} CPUs, nginx on loopback. Page cache "
        f"{'dropped' if meta['cache_dropped'] else 'NOT dropped (not permitted)'} "
        "before every run.",
        f"Load average (1/5/15 min) at start {_load(meta['loadavg_start'])}, "
        f"at end {_load(meta['loadavg_end'])}: other work on the machine skews every row.",
        "",
        f"transferd: `{' '.join(meta['transferd'] or ['(not run)'])}`",
        "",
        "| tool | case | median s | min–max s | MB/s (median) | MB/s +sync | files/s "
        "| peak RSS MB | transferd/peer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.median_s is None:
            lines.append(f"| {r.label} | {r.case} | FAILED | | | | | | |")
            continue
        lines.append(
            f"| {r.label} | {r.case} | {r.median_s:.2f} "
            f"| {_num(r.min_s, '.2f')}–{_num(r.max_s, '.2f')} "
            f"| {_num(r.mb_per_s, '.0f')} | {_num(r.mb_per_s_with_sync, '.0f')} "
            f"| {_num(r.files_per_s, '.0f')} "
            f"| {_num(None if r.peak_rss_bytes is None else r.peak_rss_bytes / MB, '.0f')} "
            f"| {_num(r.ratio, '.2f')} |"
        )
    lines += ["", "| target (issue 3) | result | detail |", "|---|---|---|"]
    lines += [f"| {v.target} | {v.status} | {v.detail} |" for v in verdict_list]
    failures = [(r.label, r.case, e) for r in rows for e in r.errors]
    if failures:
        lines += ["", "Failed runs (not counted):", ""]
        lines += [f"- {label} ({case}) {error}" for label, case, error in failures]
    if meta.get("notes"):
        lines += ["", *[f"- {n}" for n in meta["notes"]]]
    return "\n".join(lines) + "\n"


def as_json(
    records: list[RunRecord], rows: list[Row], verdict_list: list[Verdict], meta: dict[str, Any]
) -> dict[str, Any]:
    return {
        "meta": meta,
        "rows": [asdict(r) for r in rows],
        "targets": [asdict(v) for v in verdict_list],
        "runs": [asdict(r) for r in records],
    }
