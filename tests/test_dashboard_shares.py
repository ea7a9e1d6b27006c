"""Incoming OCM shares in the dashboard, in a real browser, between two real nodes (issue #7).

Node A (the sender) exports a folder over its own OCM WebDAV, behind the fault
proxy so the copy is slow enough to watch; node B (the receiver) has a
recipient with ``auto_accept = false``, so the share waits in B's dashboard
card "Incoming shares awaiting acceptance" until someone clicks Accept or
Decline there.  Screenshots go to test-artifacts/ through ``shot``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Page, expect

from tests import test_dashboard
from tests.node_proc import Node, adler32_hex, wait_until
from tests.ocm_nodes import OcmNode, start_ocm_node, write_directory
from tests.redis_server import free_port
from tests.servers import FaultProxy
from tests.test_dashboard import expect_progress_to_grow, shot, sign_in

MiB = 1024 * 1024

# the real-Chromium fixtures of the dashboard tests, registered in this module too
browser = test_dashboard.browser
page = test_dashboard.page


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    return tmp_path / "mesh.json"


def make_folder(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def two_nodes(
    node_factory: Callable[..., Node], fault_proxy: Callable[[str], FaultProxy], tmp_path: Path,
    redis_url: str, mesh: Path, outbox: Path, inbox: Path,
) -> tuple[OcmNode, OcmNode, FaultProxy]:
    """Sender A (alice, reached through a proxy) and receiver B (bob, accepts by hand)."""
    port = free_port()
    proxy = fault_proxy(f"http://127.0.0.1:{port}")
    a = start_ocm_node(node_factory, tmp_path, "a", 1, redis_url, directory=mesh,
                       recipients={"alice": {"tenant": "lab", "root": str(tmp_path / "a-in")}},
                       allow_roots=[outbox], public_url=proxy.url, port=port)
    b = start_ocm_node(node_factory, tmp_path, "b", 2, redis_url, directory=mesh,
                       recipients={"bob": {"tenant": "lab", "root": str(inbox),
                                           "auto_accept": False}})
    write_directory(mesh, [a.host, b.host])
    return a, b, proxy


def send(a: OcmNode, b: OcmNode, folder: Path) -> dict[str, Any]:
    return a.api("POST", "/ocm/sent", {"to": f"bob@{b.host}", "path": str(folder)})


def pending(b: OcmNode) -> list[dict[str, Any]]:
    shares: list[dict[str, Any]] = b.api("GET", "/shares", query={"state": "pending"})["shares"]
    return shares


def secret_of(b: OcmNode, share_id: str) -> str:
    raw = redis.Redis.from_url(b.redis_url).get(f"td:ocm:secret:{share_id}")
    assert isinstance(raw, bytes) and raw
    return raw.decode()


def assert_no_secret(page: Page, *secrets: str) -> None:
    html, text = page.content(), page.inner_text("body")
    for secret in secrets:
        assert secret not in html and secret not in text


def test_accept_an_incoming_share_and_watch_its_transfer_finish(
    node_factory: Callable[..., Node], redis_url: str, tmp_path: Path, mesh: Path,
    fault_proxy: Callable[[str], FaultProxy], page: Page,
) -> None:
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    inbox.mkdir()
    files = {"frames.bin": os.urandom(24 * MiB + 7), "meta/notes.txt": b"run 7: calibrated\n",
             "meta/deep/cal.dat": os.urandom(300_000)}
    make_folder(outbox / "run7", files)
    a, b, proxy = two_nodes(node_factory, fault_proxy, tmp_path, redis_url, mesh, outbox, inbox)

    # bob's tenant signs in and waits on the shares tab; the share arrives while it is open
    sign_in(page, b.node, b.token)
    page.evaluate("window.__noReload = 'still here'")
    page.click("#tabs a[data-tab=shares]")
    card = page.locator(".card", has_text="Incoming shares awaiting acceptance")
    expect(card).to_contain_text("No share is waiting for you")
    sent = send(a, b, outbox / "run7")
    item = card.locator("li.share")
    expect(item).to_have_count(1, timeout=30_000)  # over the event stream, no reload
    share = pending(b)[0]
    secret = secret_of(b, share["id"])
    assert b.client.job(share["job_id"])["state"] == "AWAITING_ACCEPTANCE"
    assert not any(inbox.rglob("*"))  # nothing moves before someone accepts
    expect(item.locator(".share-name")).to_have_text("run7")
    expect(item).to_contain_text(f"from alice@{a.host}")
    expect(item).to_contain_text("24.3 MiB")
    expect(page.locator("#shares-count")).to_have_text("1")
    assert_no_secret(page, secret, b.token)
    shot(page, "dashboard-share-incoming")

    # slow enough to be seen active: each connection to A gets at most 2 MiB/s
    proxy.set(throttle_bps=2 * MiB)
    item.get_by_role("button", name="Accept").click()
    expect(page.locator("#toast")).to_have_text("Accepted “run7”; the transfer starts now")
    expect(page).to_have_url(f"{b.node.url}/#/jobs/{share['job_id']}")
    expect(page.locator("#job-state")).to_contain_text("active", timeout=30_000)
    expect(page.locator("#shares-count")).to_be_hidden()  # nothing awaits any more
    bar = expect_progress_to_grow(page)
    shot(page, "dashboard-share-accepted-active")
    expect(page.locator("#job-state")).to_contain_text("finished", timeout=120_000)
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("tr[data-file] .pill")).to_have_text(["finished"] * len(files))
    assert page.evaluate("window.__noReload") == "still here"
    assert_no_secret(page, secret, b.token)
    shot(page, "dashboard-share-accepted-finished")

    # the files arrived whole, each verified against the checksum A published
    for rel, data in files.items():
        assert (inbox / "run7" / rel).read_bytes() == data
    records = b.client.files(share["job_id"])["files"]
    assert len(records) == len(files)
    for record in records:
        rel = record["destination"].split("/run7/", 1)[1]
        assert record["verified_checksum"] == f"adler32:{adler32_hex(inbox / 'run7' / rel)}"
        assert record["checksum"] == record["verified_checksum"]

    # the card no longer offers it, and the sender heard that bob accepted
    page.click("#tabs a[data-tab=shares]")
    expect(card).to_contain_text("No share is waiting for you")
    expect(card.locator("li.share")).to_have_count(0)
    assert pending(b) == []
    assert b.api("GET", "/shares")["shares"][0]["state"] == "accepted"
    notices = a.api("GET", f"/ocm/sent/{sent['id']}")["notifications"]
    assert [n["type"] for n in notices][:1] == ["SHARE_ACCEPTED"]
    assert_no_secret(page, secret, b.token)


def test_decline_an_incoming_share_removes_it_and_moves_nothing(
    node_factory: Callable[..., Node], redis_url: str, tmp_path: Path, mesh: Path,
    fault_proxy: Callable[[str], FaultProxy], page: Page,
) -> None:
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    inbox.mkdir()
    make_folder(outbox / "junk", {"x.bin": os.urandom(MiB), "y.txt": b"not wanted\n"})
    a, b, _ = two_nodes(node_factory, fault_proxy, tmp_path, redis_url, mesh, outbox, inbox)

    # signed in on the overview: the tab's badge tells a share came in
    sign_in(page, b.node, b.token)
    sent = send(a, b, outbox / "junk")
    expect(page.locator("#shares-count")).to_have_text("1", timeout=30_000)
    share = pending(b)[0]
    secret = secret_of(b, share["id"])
    page.click("#tabs a[data-tab=shares]")
    item = page.locator(f'li.share[data-share="{share["id"]}"]')
    expect(item.locator(".share-name")).to_have_text("junk")
    expect(item).to_contain_text(f"from alice@{a.host}")
    assert_no_secret(page, secret, b.token)

    item.get_by_role("button", name="Decline").click()
    expect(page.locator("#toast")).to_have_text("Declined “junk”")
    expect(item).to_have_count(0)
    expect(page.locator("#app")).to_contain_text("No share is waiting for you")
    expect(page.locator("#shares-count")).to_be_hidden()
    assert page.url.endswith("#/shares")  # no job page: there is nothing to watch
    shot(page, "dashboard-share-declined")

    assert pending(b) == []
    assert b.api("GET", "/shares")["shares"][0]["state"] == "declined"
    job = b.client.job(share["job_id"])
    assert job["state"] == "CANCELED" and job["totals"]["bytes_done"] == 0
    assert all(f["state"] == "CANCELED" for f in b.client.files(share["job_id"])["files"])
    wait_until(lambda: a.api("GET", f"/ocm/sent/{sent['id']}")["state"] == "declined", 30,
               "the sender to hear of the decline")
    assert not any(inbox.rglob("*"))
    assert_no_secret(page, secret, b.token)
