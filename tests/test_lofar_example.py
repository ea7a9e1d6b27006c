"""examples/lofar end to end: real archives, two real transferd nodes, OCM, numpy, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from examples.lofar.archive import read_visibilities
from policies.policy import load_policy

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = [sys.executable, "-m", "examples.lofar"]
SMALL = ["--subbands", "4", "--subband-size", "2M"]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that name ``text`` (the run's work directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and entry.name != str(os.getpid()):
            found.append(cmdline)
    return found


def run_example(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [*EXAMPLE, *SMALL, "--keep", "--work-dir", str(tmp_path), "--report-json", str(report),
         *extra],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(report.read_text())


def assert_krakow_has_products(report: dict[str, Any]) -> None:
    """Every subband, averaged over 64 channels by this test, is at Kraków, bit for bit."""
    archived = sorted(
        tar for site in report["archives"].values() for tar in Path(site).glob("*.tar"))
    assert len(archived) == 4
    krakow = Path(report["krakow_dir"])
    for tar in archived:
        vis, meta = read_visibilities(tar)
        assert vis.dtype == np.complex64 and vis.shape[0] == meta["channels"] == 256
        expected = vis.reshape(4, 64, vis.shape[1]).mean(axis=1, dtype=np.complex64)
        product = krakow / (tar.name.split(".MS_")[0] + ".avg64.npy")
        got = np.load(product, allow_pickle=False)
        assert got.shape == (4, vis.shape[1]) and got.dtype == np.complex64
        np.testing.assert_array_equal(got, expected)
    listed = json.loads((krakow / "products.json").read_text())["products"]
    assert {p["name"] for p in listed} == {p.name for p in krakow.glob("*.npy")}


def test_pipeline_end_to_end(tmp_path: Path) -> None:
    done, report = run_example(tmp_path)
    assert "all checksums verified: yes" in done.stdout
    assert report["all_checksums_verified"] is True
    rows = {(r["stage"], r["site"]): r for r in report["rows"]}
    assert set(rows) == {("1 stage-in", "SURF → processing"), ("1 stage-in", "FZJ → processing"),
                         ("2 average 64×", "processing"), ("3 OCM share", "processing → Kraków")}
    for row in rows.values():
        assert row["verified"] == row["files"] == row["checked"] > 0
    assert rows[("1 stage-in", "SURF → processing")]["files"] == 2
    assert rows[("1 stage-in", "FZJ → processing")]["retries"] == 0
    share = rows[("3 OCM share", "processing → Kraków")]
    assert share["files"] == 5  # 4 products + products.json
    assert "TRANSFER_COMPLETED" in share["note"]
    # 64× fewer channels: the products are ~64 times smaller than the raw tars
    raw_bytes = sum(r["bytes"] for k, r in rows.items() if k[0] == "1 stage-in")
    assert 50 < raw_bytes / share["bytes"] < 70
    assert_krakow_has_products(report)
    assert processes_mentioning(report["work_dir"]) == []


def test_pipeline_survives_dropped_connections(tmp_path: Path) -> None:
    done, report = run_example(tmp_path, "--inject-faults")
    assert "all checksums verified: yes" in done.stdout
    assert report["all_checksums_verified"] is True
    fzj = next(r for r in report["rows"] if r["site"] == "FZJ → processing")
    # the proxy really reset connections; each cut chunk was fetched again, in place or
    # (after chunk_tries resets of the same chunk) on a later attempt
    assert "resets injected" in fzj["note"] and int(fzj["note"].split()[0]) >= 1
    assert fzj["verified"] == fzj["files"] == 2
    # resume by chunk: a reset costs at most the chunk it cut, never the whole subband
    chunk_bytes = report["chunk_bytes"]
    assert chunk_bytes == 512 * 1024  # a quarter of a 2 MiB subband
    policy = load_policy(Path(report["work_dir"]) / "processing" / "policy.toml")
    assert policy.chunking.chunk_size_bytes == policy.chunking.max_chunk_bytes == chunk_bytes
    link = report["faulty_link"]
    assert link["resets"] >= 1 and link["bytes_needed"] == fzj["bytes"]
    resent = link["bytes_sent"] - link["bytes_needed"]
    http_headers = 64 * 1024  # the link also carries every response's headers
    assert 0 <= resent <= link["resets"] * chunk_bytes + http_headers, link
    assert_krakow_has_products(report)
    assert processes_mentioning(report["work_dir"]) == []


def test_ctrl_c_stops_everything_and_removes_the_work_dir(tmp_path: Path) -> None:
    proc = subprocess.Popen([*EXAMPLE, *SMALL, "--work-dir", str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Kraków node: transferd serve on" in line:
            break
    else:
        raise AssertionError("the nodes never started:\n" + "".join(seen))
    (work,) = list(tmp_path.glob("lofar-*"))
    assert processes_mentioning(str(work))  # the nodes and their redis-servers are up
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert processes_mentioning(str(work)) == []
    assert not work.exists()
