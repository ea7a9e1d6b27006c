"""The LOFAR pipeline: archives (SURF, FZJ) → processing → 64× average → Kraków over OCM.

Stage 1 submits ONE bulk job for every subband at both archives, with the
adler32 values the archives record, and follows it with ``transferd watch``;
the processing node runs with a policy file of its own (``--policy``: chunks of
a quarter subband, one stream per file), so a copy cut off by a reset fetches
that chunk again (or, on a later attempt, the chunks it lacks) instead of
starting the subband again.
Stage 2 averages each subband's visibilities over 64 channels (numpy).
Stage 3 shares the products folder with ``imaging@<Kraków>`` over OCM
(``transferd share``); Kraków accepts (``transferd shares accept``) and its own
transferd pulls the files in.  The report table closes the run.

Run ``python -m examples.lofar --help`` for the options.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from examples.lofar.archive import OBSERVATION, md5_hex, write_site
from examples.lofar.nodes import NodeFailed, TransferdNode, poll, write_mesh
from examples.lofar.reduce import PRODUCTS_MANIFEST, reduce_all
from examples.lofar.report import Row, human_bytes, render, write_json
from examples.lofar.sites import ArchiveSite, FaultyLink, ServerLoop

__all__ = ["chunk_bytes_for", "main", "parse_size"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
KRAKOW_USER = "imaging"
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmg]?)i?b?$", re.IGNORECASE)
_SHARE_TIMEOUT_S = 60.0
_NOTICE_TIMEOUT_S = 30.0
CHUNKS_PER_SUBBAND = 4
_MIN_CHUNK_BYTES = 64 << 10


def parse_size(text: str) -> int:
    """``8M``, ``512k``, ``1G``, ``1048576`` → bytes (binary units; argparse type)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 2M, 512K or 1G")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    size = int(float(match.group(1)) * scale)
    if size < 4096:
        raise argparse.ArgumentTypeError("a subband needs at least 4K")
    return size


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@dataclass
class Layout:
    """Where everything lives under the run's work directory."""

    work: Path

    def __post_init__(self) -> None:
        self.surf = self.work / "archive-surf"
        self.fzj = self.work / "archive-fzj"
        self.proc = self.work / "processing"
        self.raw = self.proc / "raw" / OBSERVATION
        self.products = self.proc / "products" / OBSERVATION
        self.krakow = self.work / "krakow"
        self.imaging = self.krakow / "imaging"
        self.mesh = self.work / "mesh.json"
        self.jobs = self.work / "jobs"
        for path in (self.surf, self.fzj, self.raw, self.imaging, self.jobs):
            path.mkdir(parents=True, exist_ok=True)


def _ocm_toml(provider: str, mesh: Path, user: str, root: Path, auto_accept: bool) -> str:
    return "\n".join([
        "[ocm]",
        f'provider = "{provider}"',
        f'directory_file = "{mesh}"',
        "allow_http = true  # loopback lab: peers are discovered over plain http",
        f"[ocm.recipients.{user}]",
        'tenant = "lofar"',
        f'root = "{root}"',
        f"auto_accept = {str(auto_accept).lower()}",
        "",
    ])


def chunk_bytes_for(subband_size: int) -> int:
    """The processing node's chunk size: a quarter of a subband (at least 64 KiB)."""
    return max(_MIN_CHUNK_BYTES, subband_size // CHUNKS_PER_SUBBAND)


def _policy_toml(chunk_bytes: int) -> str:
    return "\n".join([
        "# The processing node's policy (transferd serve --policy FILE, over the shipped",
        "# defaults).  A subband is smaller than the default 64 MiB chunk, so a copy cut",
        "# off part-way would start again from its first byte; with chunks of a quarter",
        "# subband, a retry fetches only the chunks the earlier attempt did not finish.",
        "[chunking]",
        f"chunk_size_bytes = {chunk_bytes}",
        f"min_chunk_bytes = {chunk_bytes}",
        f"max_chunk_bytes = {chunk_bytes}  # or a fast link's tuning makes chunks larger",
        "# One stream per file: the workers already copy several subbands at once.  A",
        "# reset costs the chunk it cut: that chunk is fetched again in place (up to",
        "# chunk_tries times), and only a chunk that keeps failing ends the attempt.",
        "max_streams = 1",
        "",
    ])


def _fetch_json(url: str, attempts: int = 5) -> Any:
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                return json.loads(answer.read())
        except (urllib.error.URLError, OSError, ValueError):
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _span_s(records: list[dict[str, Any]]) -> float:
    starts = [r["started_at"] for r in records if r.get("started_at")]
    ends = [r["finished_at"] for r in records if r.get("finished_at")]
    return max(ends) - min(starts) if starts and ends else 0.0


def _retries(records: list[dict[str, Any]]) -> int:
    return sum(max(0, int(r.get("attempts") or 0) - 1) for r in records)


class Pipeline:
    """One run; ``run`` returns the report rows, ``ExitStack`` owns every process started."""

    def __init__(self, args: argparse.Namespace, layout: Layout, stack: ExitStack) -> None:
        self.args = args
        self.at = layout
        self.stack = stack
        self.rows: list[Row] = []
        self.extra: dict[str, Any] = {"work_dir": str(layout.work)}

    # -- set-up ----------------------------------------------------------------------

    def start_sites(self) -> dict[str, str]:
        """Write the archives' content and serve it; returns each site's base URL."""
        n = self.args.subbands
        surf_subbands = list(range(0, (n + 1) // 2))
        fzj_subbands = list(range((n + 1) // 2, n))
        say(f"writing {n} synthetic subbands of {human_bytes(self.args.subband_size)} "
            f"({len(surf_subbands)} at SURF, {len(fzj_subbands)} at FZJ)")
        write_site(self.at.surf, "SURF", surf_subbands, self.args.subband_size)
        write_site(self.at.fzj, "FZJ", fzj_subbands, self.args.subband_size)
        loop = ServerLoop()
        self.stack.callback(loop.close)
        urls: dict[str, str] = {}
        for name, root in (("SURF", self.at.surf), ("FZJ", self.at.fzj)):
            site = ArchiveSite(name, root, loop)
            site.start()
            self.stack.callback(site.stop)
            urls[name] = site.url
        self.link: FaultyLink | None = None
        if self.args.inject_faults:
            fzj_port = int(urls["FZJ"].rsplit(":", 1)[1])
            size = self.args.subband_size
            self.link = FaultyLink(fzj_port, loop, min_bytes=max(size // 4, 4096),
                                   max_bytes=max(size * 3 // 2, 8192))
            self.link.start()
            self.stack.callback(self.link.stop)
            urls["FZJ"] = self.link.url
            say(f"faults on: FZJ is reached through {self.link.url}, which resets "
                f"connections part-way, now and then")
        for name, url in urls.items():
            say(f"{name} archive serving {url}/lta/{OBSERVATION}/")
        self.extra["archives"] = {"SURF": str(self.at.surf / "lta" / OBSERVATION),
                                  "FZJ": str(self.at.fzj / "lta" / OBSERVATION)}
        return urls

    def start_nodes(self) -> None:
        at = self.at
        self.chunk_bytes = chunk_bytes_for(self.args.subband_size)
        self.proc = TransferdNode(
            "processing", at.proc, allow_roots=[at.proc],
            ocm_toml=_ocm_toml("LOFAR processing", at.mesh, "pipeline", at.proc, False),
            policy_toml=_policy_toml(self.chunk_bytes))
        self.krakow = TransferdNode(
            "Kraków", at.krakow, allow_roots=[],
            ocm_toml=_ocm_toml("PSNC Kraków", at.mesh, KRAKOW_USER, at.imaging, False))
        for node in (self.proc, self.krakow):
            node.start()
            self.stack.callback(node.stop)
        for node in (self.proc, self.krakow):
            node.wait_ready()
            say(f"{node.name} node: transferd serve on {node.url} (embedded redis-server in "
                f"{node.state_dir})")
        say(f"processing node: {human_bytes(self.chunk_bytes)} chunks (--policy "
            f"{self.proc.policy}), so a copy cut off resumes from the chunks it lacks")
        self.extra["chunk_bytes"] = self.chunk_bytes
        write_mesh(at.mesh, [self.proc.host, self.krakow.host])
        self.extra["krakow_dir"] = str(at.imaging / OBSERVATION)

    # -- stage 1 ---------------------------------------------------------------------

    def stage1(self, urls: dict[str, str]) -> list[Path]:
        say("stage 1: one bulk job from both archives to the processing site")
        manifest_rows = []
        archived: dict[str, dict[str, Any]] = {}
        site_of: dict[str, str] = {}
        for site, base in urls.items():
            record = _fetch_json(f"{base}/lta/{OBSERVATION}/manifest.json")
            for f in record["files"]:
                source = f"{base}/lta/{OBSERVATION}/{f['name']}"
                archived[f["name"]] = f
                site_of[source] = site
                manifest_rows.append([source, (self.at.raw / f["name"]).as_uri(), f["size"],
                                      f"adler32:{f['adler32']}"])
        job_manifest = self.at.jobs / "stage1.csv"
        with job_manifest.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["source", "destination", "size", "checksum"])
            writer.writerows(manifest_rows)
        key = f"lofar-{OBSERVATION}-stage1-{self.at.work.name}"
        # what the faulty link carried before the copies (the manifest) is not theirs
        link_before = replace(self.link.stats) if self.link is not None else None
        job_id = self.proc.run("submit", "--manifest", str(job_manifest), "--priority", "4",
                               "--activity", "lofar-staging", "--max-retries", "10",
                               "--retry-delay", "0.5", "--idempotency-key", key).strip()
        say(f"transferd submit --manifest {job_manifest.name}: job {job_id} "
            f"({len(manifest_rows)} files); transferd watch {job_id}")
        rc = self.proc.watch(job_id)
        if rc != 0:
            raise NodeFailed(f"stage 1 job {job_id} did not finish (watch exited {rc}); "
                             f"see `transferd files {job_id} --state FAILED`")
        records = list(self.proc.client().iter_files(job_id))
        for site in urls:
            mine = [r for r in records if site_of.get(r["source"]) == site]
            verified = 0
            for r in mine:
                name = r["destination"].rsplit("/", 1)[1]
                expected = archived[name]
                copy = self.at.raw / name
                adler_ok = r["state"] == "FINISHED" and \
                    r.get("verified_checksum") == f"adler32:{expected['adler32']}"
                md5_ok = copy.is_file() and md5_hex(copy) == expected["md5"]
                verified += adler_ok and md5_ok
            needed = sum(int(r["size"] or 0) for r in mine)
            note = ""
            if site == "FZJ" and self.link is not None and link_before is not None:
                resets = self.link.stats.resets - link_before.resets
                sent = self.link.stats.bytes_to_client - link_before.bytes_to_client
                note = (f"{resets} resets injected; {human_bytes(sent)} sent through the "
                        f"faulty link for {human_bytes(needed)} needed")
                self.extra["faulty_link"] = {"resets": resets, "bytes_sent": sent,
                                             "bytes_needed": needed}
            self.rows.append(Row(
                "1 stage-in", f"{site} → processing", len(mine), needed, _span_s(mine),
                verified, len(mine), "adler32+md5", _retries(mine), note, str(self.at.raw)))
        self.extra["stage1_job"] = job_id
        return sorted(self.at.raw.glob("*.tar"))

    # -- stage 2 ---------------------------------------------------------------------

    def stage2(self, raw: list[Path]) -> None:
        say(f"stage 2: averaging {len(raw)} subbands over 64 channels (numpy)")
        done = reduce_all(raw, self.at.products)
        products = json.loads((self.at.products / PRODUCTS_MANIFEST).read_text())["products"]
        recorded = sum(1 for p in products if md5_hex(self.at.products / p["name"]) == p["md5"])
        say(f"{human_bytes(done.bytes_in)} in, {human_bytes(done.bytes_out)} out "
            f"({done.bytes_in / max(done.bytes_out, 1):.0f}× smaller) in {done.seconds:.1f} s")
        self.rows.append(Row(
            "2 average 64×", "processing", done.files_out, done.bytes_in, done.seconds,
            recorded, done.files_out, "md5 recorded", 0,
            f"{human_bytes(done.bytes_out)} out", str(self.at.products)))

    # -- stage 3 ---------------------------------------------------------------------

    def stage3(self) -> None:
        to = f"{KRAKOW_USER}@{self.krakow.host}"
        say(f"stage 3: transferd share --to {to} {self.at.products} --expires 1d")
        sent_id = self.proc.run("share", "--to", to, str(self.at.products),
                                "--expires", "1d").strip()

        def arrived() -> dict[str, Any] | None:
            listed = self.krakow.run_json("shares", "ls", "--state", "pending")["shares"]
            return next((s for s in listed if s["name"] == OBSERVATION
                         and s["provider"] == self.proc.host), None)

        share = poll(arrived, _SHARE_TIMEOUT_S, "the share to reach Kraków")
        say(f"Kraków: share {share['id']} from {share['sender']} "
            f"({human_bytes(share['size'] or 0)}) pending; transferd shares accept {share['id']}")
        accepted = self.krakow.run("shares", "accept", share["id"]).strip()
        job_id = accepted.rsplit(" ", 1)[-1]
        say(f"Kraków: {accepted}; transferd watch {job_id}")
        rc = self.krakow.watch(job_id)
        if rc != 0:
            raise NodeFailed(f"stage 3 job {job_id} on Kraków did not finish (watch exited {rc})")
        records = list(self.krakow.client().iter_files(job_id))
        landed = self.at.imaging / OBSERVATION
        wanted = {p["name"]: p for p in json.loads(
            (self.at.products / PRODUCTS_MANIFEST).read_text())["products"]}
        verified = 0
        for r in records:
            name = r["destination"].rsplit("/", 1)[1]
            adler_ok = (r["state"] == "FINISHED" and r.get("checksum") is not None
                        and r.get("verified_checksum") == r.get("checksum"))
            content_ok = name not in wanted or md5_hex(landed / name) == wanted[name]["md5"]
            verified += adler_ok and content_ok
        missing = [name for name in wanted if not (landed / name).is_file()]
        if missing:
            raise NodeFailed(f"Kraków lacks {len(missing)} products, e.g. {missing[0]}")

        def completed() -> list[str] | None:
            for sent in self.proc.run_json("share", "--list")["shares"]:
                seen = [n["type"] for n in sent["notifications"]]
                if sent["id"] == sent_id and "TRANSFER_COMPLETED" in seen:
                    return seen
            return None

        try:
            notices = ", ".join(poll(completed, _NOTICE_TIMEOUT_S, "TRANSFER_COMPLETED"))
        except NodeFailed:
            notices = "no TRANSFER_COMPLETED yet"
        self.rows.append(Row(
            "3 OCM share", "processing → Kraków", len(records),
            sum(int(r["size"] or 0) for r in records), _span_s(records), verified, len(records),
            "adler32+md5", _retries(records), f"sender told: {notices}", str(landed)))
        self.extra.update(stage3_job=job_id, share_id=share["id"], sent_share_id=sent_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.lofar",
        description="A LOFAR-style pipeline on one machine with transferd: two archives "
        "(SURF, FZJ) → processing node → 64× channel averaging → Kraków over OCM.",
        epilog="examples:\n  examples/lofar/run\n  examples/lofar/run --subbands 48 "
        "--subband-size 32M\n  examples/lofar/run --inject-faults --keep",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subbands", type=int, default=24, metavar="N",
                        help="subbands in the observation, split over SURF and FZJ "
                        "(default 24)")
    parser.add_argument("--subband-size", type=parse_size, default=parse_size("8M"),
                        metavar="SIZE", help="size of one subband tar, e.g. 2M, 64M "
                        "(default 8M)")
    parser.add_argument("--inject-faults", action="store_true",
                        help="FZJ drops connections now and then (a resetting TCP proxy)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (archives, copies, products, logs)")
    parser.add_argument("--work-dir", type=Path, metavar="DIR",
                        help="where to work (default: a new temporary directory)")
    parser.add_argument("--report-json", type=Path, metavar="FILE",
                        help="also write the report as JSON to FILE")
    return parser


@contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C does: through the clean-up below."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.subbands < 1:
        print("examples.lofar: --subbands must be at least 1", file=sys.stderr)
        return 2
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="lofar-", dir=args.work_dir))
    else:
        work = Path(tempfile.mkdtemp(prefix="transferd-lofar-"))
    started = time.monotonic()
    code = EXIT_FAILED
    pipeline: Pipeline | None = None
    try:
        with _signals(), ExitStack() as stack:
            pipeline = Pipeline(args, Layout(work), stack)
            urls = pipeline.start_sites()
            pipeline.start_nodes()
            raw = pipeline.stage1(urls)
            pipeline.stage2(raw)
            pipeline.stage3()
            say("shutting down the nodes and the archive sites")
        rows = pipeline.rows
        print()
        print(f"LOFAR {OBSERVATION}: {args.subbands} subbands of "
              f"{human_bytes(args.subband_size)}"
              f"{', faults injected at FZJ' if args.inject_faults else ''}; "
              f"{time.monotonic() - started:.0f} s end to end")
        print(render(rows, str(work)))
        if args.report_json:
            write_json(args.report_json, rows, pipeline.extra)
        code = EXIT_OK if all(r.all_verified for r in rows) else EXIT_FAILED
    except KeyboardInterrupt:
        print("\nexamples.lofar: interrupted; everything it started is stopped",
              file=sys.stderr)
        code = EXIT_INTERRUPTED
    except NodeFailed as err:
        print(f"examples.lofar: {err}", file=sys.stderr)
        if pipeline is not None:
            for node in (getattr(pipeline, "proc", None), getattr(pipeline, "krakow", None)):
                if node is not None:
                    print(f"--- {node.name} log ({node.log_path}):\n{node.log_tail()}",
                          file=sys.stderr)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            _remove(work)
            print(f"work directory removed (--keep keeps it): {work}")
    return code


def _remove(work: Path, timeout_s: float = 15.0) -> None:
    """Remove the work directory; a redis-server still flushing its AOF may add files meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        shutil.rmtree(work, ignore_errors=True)
        if not work.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.1)
