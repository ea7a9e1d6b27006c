"""End to end on loopback: the policy file, the per-link optimizer, fair share, the
bandwidth cap and deadlines — real `transferd serve`, real nginx, the fault proxy."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.node_proc import TRANSFERD, Node, create_token, wait_until
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer
from transferd.client import Client, ClientError

MiB = 1024 * 1024


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def link_named(ops: Client, name: str) -> dict[str, Any] | None:
    return next((link for link in ops.links() if link["link"] == name), None)


def test_a_bad_policy_file_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    bad = write_policy(tmp_path / "bad.toml", "[optimizer]\nmin_active = 0\n")
    out = subprocess.run(
        [*TRANSFERD, "serve", "--port", "0", "--state-dir", str(tmp_path / "s"),
         "--policy", str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "optimizer.min_active" in out.stderr + out.stdout


def test_policy_in_force_is_served_and_sighup_reloads_it_without_dropping_work(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path, tmp_path: Path,
) -> None:
    (nginx_server.root / "slow.bin").write_bytes(os.urandom(2 * MiB))
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=512 * 1024)
    policy = write_policy(tmp_path / "policy.toml", "[optimizer]\ninterval_s = 0.5\n")
    node = node_factory(allow_roots=[dest], extra=["--policy", str(policy)])
    user = Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))
    assert user.policy()["optimizer"]["interval_s"] == 0.5
    assert user.policy()["source"] == str(policy)
    with pytest.raises(ClientError) as err:
        user.links()  # links name every tenant's hosts: operators only
    assert err.value.status == 403

    job = user.submit([{"source": f"{proxy.url}/slow.bin",
                        "destination": f"file://{dest}/slow.bin"}], {})["job_id"]
    wait_until(lambda: user.job(job)["totals"]["bytes_done"] > 0, 30, "the copy to start")

    write_policy(policy, "[optimizer]\ninterval_s = 0.7\n[fairshare.tenants]\nlofar = 3\n")
    node.proc.popen.send_signal(signal.SIGHUP)
    node.proc.wait_for_line("policy reloaded", 30)
    answer = user.policy()
    assert answer["optimizer"]["interval_s"] == 0.7
    assert answer["fairshare"]["tenants"] == {"lofar": 3.0}

    write_policy(policy, "[optimizer]\ninterval_s = -1\n")  # a bad reload keeps the policy
    node.proc.popen.send_signal(signal.SIGHUP)
    line = node.proc.wait_for_line("policy not reloaded", 30)
    assert "optimizer.interval_s" in line
    assert user.policy()["optimizer"]["interval_s"] == 0.7

    wait_until(lambda: user.job(job)["state"] in {"FINISHED", "FAILED"}, 60, "the job to end")
    finished = user.job(job)
    assert finished["state"] == "FINISHED"
    assert finished["totals"]["files_by_state"]["FINISHED"] == 1  # one attempt, not restarted
    assert user.files(job)["files"][0]["attempts"] == 1


def test_a_failing_link_backs_off_to_its_minimum_while_a_healthy_link_grows_then_recovers(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path, tmp_path: Path,
) -> None:
    (nginx_server.root / "four.bin").write_bytes(os.urandom(4 * MiB))
    (nginx_server.root / "one.bin").write_bytes(os.urandom(1 * MiB))
    healthy = fault_proxy(nginx_server.url)
    healthy.set(throttle_bps=512 * 1024)  # per connection: more actives, more throughput
    failing = fault_proxy(nginx_server.url)
    failing.set(reset_probability=0.3)  # nearly every 1 MiB file is reset on the way
    policy = write_policy(tmp_path / "policy.toml", (
        "[optimizer]\ninterval_s = 1.5\nmin_active = 2\nstart_active = 4\n"
        "[limits]\nlink_max_active = 12\n"
    ))
    node = node_factory(allow_roots=[dest], workers=24, extra=["--policy", str(policy)])
    user = Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))
    ops = Client(node.url, create_token("ops", "operator", redis_url=redis_server.url))
    healthy_url = healthy.url.replace("127.0.0.1", "localhost")  # another host, another link
    healthy_link, failing_link = "localhost -> local", "127.0.0.1 -> local"

    user.submit([{"source": f"{healthy_url}/four.bin", "destination": f"file://{dest}/h{i}"}
                 for i in range(300)], {})
    user.submit([{"source": f"{failing.url}/one.bin", "destination": f"file://{dest}/f{i}"}
                 for i in range(100)], {"max_retries": 30, "retry_delay_s": 0.2})

    def diverged() -> bool:
        good, bad = link_named(ops, healthy_link), link_named(ops, failing_link)
        return bool(good and bad and bad["target"] == 2 and good["target"] >= 7)

    wait_until(diverged, 120, "the failing link at its minimum and the healthy one grown")
    bad = link_named(ops, failing_link)
    assert bad is not None
    assert bad["failures"] > 0 and bad["success_rate"] is not None and bad["success_rate"] < 0.97
    assert any("success rate" in d["rationale"] for d in bad["decisions"])
    assert all({"successes", "failures", "queued", "active", "throughput_bps"}
               <= d["inputs"].keys() for d in bad["decisions"])
    good = link_named(ops, healthy_link)
    assert good is not None and good["active"] <= good["target"] <= 12
    assert any("->" in d["rationale"] and d["target"] > d["previous"]
               for d in good["decisions"])

    # resets stop: fresh work on the link succeeds and the optimizer raises it again
    failing.set(reset_probability=0.0, throttle_bps=512 * 1024)
    user.submit([{"source": f"{failing.url}/one.bin", "destination": f"file://{dest}/r{i}"}
                 for i in range(100)], {})
    wait_until(lambda: (link_named(ops, failing_link) or {}).get("target", 0) > 2, 90,
               "the failing link to recover")
    recovered = link_named(ops, failing_link)
    assert recovered is not None and recovered["decisions"][0]["target"] > 2


def test_two_tenants_share_one_link_evenly(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    dest: Path, tmp_path: Path,
) -> None:
    """Two tenants with 1,000 files each on one link get throughput within 20% of each
    other, measured over the stretch where both of them have files waiting."""
    folder = nginx_server.root / "small"
    folder.mkdir()
    for i in range(1000):
        (folder / f"f{i:04d}").write_bytes(os.urandom(1024))
    policy = write_policy(tmp_path / "policy.toml",
                          "[optimizer]\nenabled = false\n[limits]\nlink_max_active = 8\n")
    node = node_factory(allow_roots=[dest], workers=8, extra=["--policy", str(policy)])
    clients = {t: Client(node.url, create_token(t, "submitter", redis_url=redis_server.url))
               for t in ("alice", "bob")}
    jobs = {}
    for tenant, client in clients.items():
        (dest / tenant).mkdir()
        jobs[tenant] = client.submit(
            [{"source": f"{nginx_server.url}/small/f{i:04d}",
              "destination": f"file://{dest}/{tenant}/f{i:04d}"} for i in range(1000)], {}
        )["job_id"]

    def totals() -> dict[str, dict[str, Any]]:
        return {t: clients[t].job(jobs[t])["totals"] for t in clients}

    def waiting(job_totals: dict[str, Any]) -> int:
        return int(job_totals["files_by_state"]["SUBMITTED"])  # queued or dispatched, unclaimed

    # alice's first files may start while bob's job is being stored: the window opens once
    # both jobs are in with files waiting, and closes when the first tenant's queue is empty
    opened = totals()
    assert all(waiting(t) > 0 for t in opened.values()), opened
    t0 = time.monotonic()
    closed: dict[str, dict[str, Any]] = {}

    def a_queue_empty() -> bool:
        closed.update(totals())
        return any(waiting(t) == 0 for t in closed.values())

    wait_until(a_queue_empty, 120, "a tenant's queue to empty")
    window_s = time.monotonic() - t0
    files = {t: closed[t]["files_by_state"]["FINISHED"] - opened[t]["files_by_state"]["FINISHED"]
             for t in clients}
    moved = {t: closed[t]["bytes_done"] - opened[t]["bytes_done"] for t in clients}
    seen = f"{files} files, {moved} bytes in {window_s:.1f} s while both waited"
    assert sum(files.values()) >= 1000, f"too short a window to judge: {seen}"
    assert max(files.values()) / max(1, min(files.values())) <= 1.2, seen
    assert max(moved.values()) / max(1, min(moved.values())) <= 1.2, seen
    wait_until(lambda: all(t["files_by_state"]["FINISHED"] == 1000 for t in totals().values()),
               120, "every file to finish")


def test_a_bandwidth_cap_of_50_mb_per_s_holds_over_20_s(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    dest: Path, tmp_path: Path,
) -> None:
    (nginx_server.root / "big.bin").write_bytes(os.urandom(32 * MiB))
    cap_bps = 50_000_000
    link = "127.0.0.1 -> local"
    policy = write_policy(tmp_path / "policy.toml", (
        "[optimizer]\nenabled = false\n[limits]\nlink_max_active = 8\n"
        f'[limits.links."{link}"]\nbandwidth_bps = {cap_bps}\n'
    ))
    node = node_factory(allow_roots=[dest], workers=8, extra=["--policy", str(policy)])
    user = Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))
    ops = Client(node.url, create_token("ops", "operator", redis_url=redis_server.url))
    job = user.submit([{"source": f"{nginx_server.url}/big.bin",
                        "destination": f"file://{dest}/b{i}"} for i in range(70)], {})["job_id"]

    def moved() -> int:
        found = link_named(ops, link)
        return int(found["bytes"]) if found else 0

    wait_until(lambda: moved() > 100 * 1000 * 1000, 60, "the link to be busy")
    t0, b0 = time.monotonic(), moved()
    window: list[tuple[float, int]] = []

    def twenty_seconds_later() -> bool:
        window.append((time.monotonic(), moved()))
        return window[-1][0] - t0 >= 20.0

    wait_until(twenty_seconds_later, 60, "a 20 s window")
    t1, b1 = window[-1]
    rate_bps = (b1 - b0) / (t1 - t0)
    assert abs(rate_bps - cap_bps) <= 0.1 * cap_bps, f"{rate_bps / 1e6:.1f} MB/s"
    assert user.job(job)["state"] == "ACTIVE"  # the window saw a busy link, not a drained one
    user.cancel(job)


def test_a_deadline_expires_the_remaining_files(
    node_factory: Callable[..., Node], nginx_server: NginxServer, redis_server: RedisServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    (nginx_server.root / "slow.bin").write_bytes(os.urandom(1 * MiB))
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=1 * MiB)
    node = node_factory(allow_roots=[dest], workers=2)
    user = Client(node.url, create_token("lofar", "submitter", redis_url=redis_server.url))
    deadline = (datetime.now(UTC) + timedelta(seconds=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    job = user.submit([{"source": f"{proxy.url}/slow.bin", "destination": f"file://{dest}/s{i}"}
                       for i in range(20)], {"deadline": deadline})["job_id"]
    wait_until(lambda: user.job(job)["state"] == "EXPIRED", 60, "the job to expire")
    files = list(user.iter_files(job))
    finished = [f for f in files if f["state"] == "FINISHED"]
    expired = [f for f in files if f["state"] != "FINISHED"]
    assert len(files) == 20 and expired
    assert all(f["state"] == "FAILED" and f["error_class"] == "expired" for f in expired)
    # nothing runs or waits any more: no retry after the deadline
    counts = user.job(job)["totals"]["files_by_state"]
    assert counts["SUBMITTED"] == counts["ACTIVE"] == 0
    assert counts["FINISHED"] == len(finished) < 20
