"""``transferd cp`` as a user runs it: a real subprocess, real files, real nginx."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

from tests.servers import FaultProxy, NginxServer, wait_until
from workers.stream.manifest import sidecar_path

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def cp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "workers.stream.cp", *args]


def cp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cp_command(*args), capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def adler(data: bytes) -> str:
    return f"adler32:{zlib.adler32(data):08x}"


def test_copy_one_file_prints_verified_checksum(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 1)
    (tmp_path / "src.bin").write_bytes(data)
    proc = cp(str(tmp_path / "src.bin"), str(tmp_path / "dst.bin"), "--chunk-size", "1M")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{adler(data)}  {tmp_path / 'dst.bin'}\n"
    assert (tmp_path / "dst.bin").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]


def test_copy_into_existing_directory_keeps_the_name(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    (tmp_path / "out").mkdir()
    proc = cp(f"file://{tmp_path}/a.txt", str(tmp_path / "out"), "--checksum", "MD5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("md5:5d41402abc4b2a76b9719d911017c592  ")
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"hello"


def test_folder_copy_keeps_relative_paths(tmp_path: Path) -> None:
    src = tmp_path / "run42"
    files = {"SB000.tar": os.urandom(2 * MiB), "sub/SB001.tar": os.urandom(1000),
             "sub/deeper/empty": b"", "x y.txt": b"space"}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    proc = cp(str(src), str(tmp_path / "copy") + "/", "--parallel-files", "3")
    assert proc.returncode == 0, proc.stderr
    printed = {}
    for line in proc.stdout.splitlines():
        checksum, path = line.split("  ", 1)
        printed[path] = checksum
    assert printed == {str(tmp_path / "copy" / rel): adler(d) for rel, d in files.items()}
    for rel, data in files.items():
        assert (tmp_path / "copy" / rel).read_bytes() == data


def test_failure_is_one_sentence_without_secrets(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"data")
    proc = cp(str(tmp_path / "src"), str(tmp_path / "dst"), "--checksum", "adler32:12345678",
              "--header", "Authorization: Bearer TOPSECRET")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "checksum mismatch" in proc.stderr and "12345678" in proc.stderr
    assert "TOPSECRET" not in proc.stderr
    assert not (tmp_path / "dst").exists() and not (tmp_path / "dst.part").exists()


def test_existing_destination_fails_unless_overwrite(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"new")
    (tmp_path / "dst").write_bytes(b"old")
    proc = cp(str(tmp_path / "src"), str(tmp_path / "dst"))
    assert proc.returncode == 1 and "destination exists" in proc.stderr
    assert (tmp_path / "dst").read_bytes() == b"old"
    proc = cp(str(tmp_path / "src"), str(tmp_path / "dst"), "--overwrite")
    assert proc.returncode == 0 and (tmp_path / "dst").read_bytes() == b"new"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for bad in (["--chunk-size", "lots"], ["--checksum", "blake9"], ["--streams", "0"],
                ["--header", "no colon here"], ["--verify", "maybe"]):
        proc = cp(str(tmp_path / "a"), str(tmp_path / "b"), *bad)
        assert proc.returncode == 2, bad


def test_unsupported_scheme_fails_clearly(tmp_path: Path) -> None:
    proc = cp("gopher://example.org/x", str(tmp_path / "b"))
    assert proc.returncode == 1
    assert "cannot read gopher URLs" in proc.stderr


def test_kill_9_then_rerun_resumes(tmp_path: Path, nginx_server: NginxServer,
                                   fault_proxy: Callable[[str], FaultProxy]) -> None:
    size = 24 * MiB
    data = os.urandom(size)
    (nginx_server.root / "big.tar").write_bytes(data)
    slow = fault_proxy(nginx_server.url)
    slow.set(throttle_bps=4 * MiB)
    dst = tmp_path / "big.tar"
    side = sidecar_path(dst)

    def done_chunks() -> int:
        try:
            return len(json.loads(side.read_text())["chunks"])
        except (OSError, ValueError):
            return 0

    proc = subprocess.Popen(cp_command(f"{slow.url}/big.tar", str(dst), "--chunk-size", "1M",
                                       "--streams", "2"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: done_chunks() >= 4, 60, "4 chunks done")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not dst.exists()
    done = done_chunks()
    assert 4 <= done < 24

    nginx_server.clear_log()
    rerun = cp(f"{nginx_server.url}/big.tar", str(dst), "--chunk-size", "1M", "-v")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout == f"{adler(data)}  {dst}\n"
    assert dst.read_bytes() == data
    assert f"reused {done} chunk(s)" in rerun.stderr
    gets = [e for e in nginx_server.log_entries() if e.method == "GET"]
    assert sum(e.body_bytes_sent for e in gets) == size - done * MiB
    assert not side.exists() and not dst.with_name("big.tar.part").exists()


def test_http_folder_copy_sends_one_get_per_small_file(tmp_path: Path,
                                                        nginx_server: NginxServer) -> None:
    files = {f"f{i}.bin": os.urandom(100_000 + i) for i in range(5)}
    for name, data in files.items():
        (nginx_server.root / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        (nginx_server.root / "run" / name).write_bytes(data)
    proc = cp(f"{nginx_server.url}/run/", str(tmp_path / "copy") + "/")
    assert proc.returncode == 0, proc.stderr
    for name, data in files.items():
        assert (tmp_path / "copy" / name).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(files)
    methods = sorted(e.method for e in nginx_server.wait_for_log(1 + len(files)))
    # the listing gave every size: no HEAD, one GET per file
    assert methods == ["GET"] * len(files) + ["PROPFIND"]
