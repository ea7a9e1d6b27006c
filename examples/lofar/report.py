"""The closing report: one row per stage and site, as a plain-text table and as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Row", "human_bytes", "render", "write_json"]


@dataclass(frozen=True)
class Row:
    stage: str
    site: str  # "SURF → processing", "processing", ...
    files: int
    bytes: int
    seconds: float
    verified: int  # files whose checksums all matched
    checked: int  # files whose checksums were compared
    checks: str  # which checksums, e.g. "adler32+md5"
    retries: int  # copy attempts after the first, over all files
    note: str  # faults injected, resumes, notifications
    results: str  # where the files are

    @property
    def rate_bps(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def all_verified(self) -> bool:
        return self.checked == self.files and self.verified == self.files


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_HEADERS = ("stage", "site / link", "files", "bytes", "time", "throughput",
            "checksums verified", "retries", "results", "notes")


def _cells(row: Row, base: str) -> tuple[str, ...]:
    results = row.results.replace(base, "WORK", 1) if base else row.results
    return (row.stage, row.site, str(row.files), human_bytes(row.bytes), f"{row.seconds:.1f} s",
            f"{human_bytes(row.rate_bps)}/s", f"{row.verified}/{row.files} {row.checks}",
            str(row.retries), results, row.note)


def render(rows: list[Row], work_dir: str = "") -> str:
    """The table; result paths under ``work_dir`` are shown as WORK/..."""
    table = [_HEADERS, *(_cells(r, work_dir) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_HEADERS))]
    numeric = {2, 3, 4, 5, 7}

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                         for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    verdict = ("all checksums verified: yes" if all(r.all_verified for r in rows)
               else "all checksums verified: NO")
    lines = [fmt(table[0]), rule, *(fmt(line) for line in table[1:]), rule, verdict]
    if work_dir:
        lines.append(f"WORK = {work_dir}")
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], extra: dict[str, Any]) -> None:
    body = {
        "all_checksums_verified": all(r.all_verified for r in rows),
        "rows": [{**asdict(r), "rate_bps": r.rate_bps} for r in rows],
        **extra,
    }
    path.write_text(json.dumps(body, indent=2))
