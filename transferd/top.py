"""``transferd top``: the dashboard's overview in the terminal, refreshing live (rich).

It reads ``GET /api/v1/summary`` with the caller's token, so it shows exactly
what the dashboard shows that caller: tiles, active transfers, failures and,
for operators, queues per link and per backend.  ``--once`` prints one frame
and exits (for scripts and tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from transferd.cli_jobs import human_bytes
from transferd.client import Client, Unreachable

__all__ = ["render", "run_top"]

UNREACHABLE_GRACE_S = 15.0
_BLOCKS = " ▁▂▃▄▅▆▇█"


def _rate(bps: float | None) -> str:
    return f"{human_bytes(bps)}/s" if bps else "-"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def sparkline(values: list[float]) -> str:
    """One character per value, scaled to the largest."""
    peak = max(values, default=0.0)
    if peak <= 0:
        return _BLOCKS[1] * len(values)
    return "".join(_BLOCKS[max(1, round(v / peak * (len(_BLOCKS) - 1)))] for v in values)


def render(summary: dict[str, Any]) -> RenderableType:
    """One frame of ``top`` from a ``/api/v1/summary`` body."""
    tiles = summary["tiles"]
    head = Table.grid(expand=True, padding=(0, 2))
    for _ in range(5):
        head.add_column(justify="center")
    head.add_row(*(Text(label, style="dim") for label in
                   ("queued", "active", "finished 24h", "failed 24h", "throughput")))
    head.add_row(
        Text(f"{tiles['queued']:,}", style="bold"),
        Text(f"{tiles['active']:,}", style="bold blue"),
        Text(f"{tiles['finished_24h']:,}", style="bold green"),
        Text(f"{tiles['failed_24h']:,}", style="bold red" if tiles["failed_24h"] else "bold"),
        Text(_rate(tiles["rate_bps"]), style="bold magenta"),
    )
    history = [p["bps"] for p in summary["throughput"]]
    chart = Text(sparkline(history), style="blue")
    chart.append(f"  last hour, peak {_rate(max(history, default=0))}", style="dim")
    parts: list[RenderableType] = [
        Panel(Group(head, Text(""), chart),
              title=f"transferd · {summary['scope']}", title_align="left"),
    ]

    jobs = Table(expand=True, box=None, header_style="dim")
    for name, kw in (("job", {}), ("state", {}), ("progress", {"ratio": 1}),
                     ("done", {"justify": "right"}), ("rate", {"justify": "right"}),
                     ("eta", {"justify": "right"})):
        jobs.add_column(name, **kw)
    for job in summary["live_jobs"][:15]:
        total = job["bytes_total"] or 0
        jobs.add_row(
            job["job_id"][:8], job["state"],
            ProgressBar(total=total or None, completed=job["bytes_done"]),
            f"{human_bytes(job['bytes_done'])}/{human_bytes(total)}", _rate(job["rate_bps"]),
            _eta(job["eta_s"]),
        )
    parts.append(Panel(jobs if summary["live_jobs"] else Text("nothing is moving", style="dim"),
                       title="live jobs", title_align="left"))

    if summary.get("links") is not None:
        links = Table(expand=True, box=None, header_style="dim")
        for name in ("link", "queued", "active/target", "rate", "success 1h"):
            links.add_column(name, justify="left" if name == "link" else "right")
        for link in summary["links"]:
            success = link["success_rate"]
            links.add_row(link["link"], f"{link['queued']:,}",
                          f"{link['active']}/{link['target']}", _rate(link["rate_bps"]),
                          "-" if success is None else f"{success:.0%}")
        backends = Table(expand=True, box=None, header_style="dim")
        for name in ("backend", "queued", "dispatched", "active", "rate"):
            backends.add_column(name, justify="left" if name == "backend" else "right")
        for b in summary["backends"] or []:
            backends.add_row(b["backend"], f"{b['queued']:,}", f"{b['dispatched']:,}",
                             f"{b['active']:,}", _rate(b["rate_bps"]))
        queues = Table.grid(expand=True, padding=(0, 2))
        queues.add_column(ratio=3)
        queues.add_column(ratio=2)
        queues.add_row(links, backends)
        parts.append(Panel(queues, title="queues", title_align="left"))

    failures = Table(expand=True, box=None, header_style="dim")
    failures.add_column("files", justify="right")
    failures.add_column("class")
    failures.add_column("reason", ratio=1, no_wrap=True, overflow="ellipsis")
    for group in summary["failures"][:8]:
        failures.add_row(str(group["count"]), group["error_class"], group["reason"])
    parts.append(Panel(failures if summary["failures"] else Text("none", style="dim"),
                       title="failures 24h", title_align="left"))
    return Group(*parts)


def run_top(client: Client, *, interval_s: float = 2.0, once: bool = False,
            out: TextIO | None = None) -> int:
    """Show the overview until Ctrl-C (or once); returns an exit code (0).

    On a terminal the frame is redrawn in place; piped (as ``top -b``), each frame
    is written after the last, under a rule with the time, as soon as it is taken."""
    console = Console(file=out) if out is not None else Console()
    if once:
        console.print(render(client.summary()))
        return 0
    if console.is_terminal:
        with Live(console=console, auto_refresh=False, screen=True) as live:
            for summary in _summaries(client, interval_s):
                live.update(render(summary), refresh=True)
    else:
        for summary in _summaries(client, interval_s):
            console.rule(time.strftime("%H:%M:%S"), align="left")
            console.print(render(summary))
            console.file.flush()
    return 0


def _summaries(client: Client, interval_s: float) -> Iterator[dict[str, Any]]:
    """The node's summary every ``interval_s``, for ever; a node that stays unreachable
    for longer than UNREACHABLE_GRACE_S ends it with ``Unreachable``."""
    last_answer = time.monotonic()
    while True:
        try:
            yield client.summary()
            last_answer = time.monotonic()
        except Unreachable:
            if time.monotonic() - last_answer > UNREACHABLE_GRACE_S:
                raise
        time.sleep(interval_s)
