"""The dashboard in a real browser (Debian's chromium via Playwright) against a real node.

Each test starts `transferd serve` (node_factory) on the test's Redis, real
nginx sources and, for slow jobs, the fault proxy's throttle.  Screenshots go
to test-artifacts/ (gitignored); with TRANSFERD_REFRESH_DOCS=1 the overview at
1280×800 is also copied to docs/dashboard.png for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.node_proc import LofarNode, Node, create_token, wait_job, wait_until
from tests.redis_server import RedisServer
from tests.servers import FaultProxy, NginxServer
from transferd.client import Client

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    # launch() gives every browser a fresh temporary profile (--user-data-dir) itself
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    yield tab
    context.close()


def shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def sign_in(page: Page, node: Node, token: str, *, url: str | None = None) -> None:
    page.goto((url or node.url) + "/")
    page.fill("#token", token)
    page.click("#signin-button")
    expect(page.locator("#tabs")).to_be_visible()
    expect(page.locator("#live")).to_have_class("live ok")


def expect_progress_to_grow(page: Page) -> Locator:
    """The job page's progress bar, once it shows more than it first did."""
    bar = page.locator("#job-progress [role=progressbar]")
    first = int(bar.get_attribute("aria-valuenow") or 0)
    page.wait_for_function(
        f"() => +document.querySelector('#job-progress [role=progressbar]')"
        f".getAttribute('aria-valuenow') > {first}", timeout=30_000)
    return bar


def slow_job(nginx: NginxServer, proxy: FaultProxy, dest: Path, client: Client, name: str,
             size: int, **params: Any) -> str:
    (nginx.root / name).write_bytes(os.urandom(size))
    answer = client.submit(
        [{"source": f"{proxy.url}/{name}", "destination": f"file://{dest}/{name}", "size": size}],
        params,
    )
    return str(answer["job_id"])


def get_json(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


# -- tests -----------------------------------------------------------------------------------


def test_unauthenticated_visit_shows_only_the_sign_in_form(
    lofar_node: Callable[..., LofarNode], page: Page, nginx_server: NginxServer, dest: Path,
) -> None:
    (nginx_server.root / "secret-name.bin").write_bytes(b"x" * 1000)
    node, _, client = lofar_node()
    job_id = client.submit([{"source": f"{nginx_server.url}/secret-name.bin",
                             "destination": f"file://{dest}/secret-name.bin"}], {})["job_id"]
    page.goto(node.url + "/")
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    expect(page.locator("#tabs")).to_be_hidden()
    body = page.inner_text("body")
    assert job_id not in body and "secret-name" not in body and "lofar" not in body
    assert page.locator("#app").inner_html() == ""
    # the page's data calls refuse without a token
    assert get_json(node.url + "/api/v1/summary")[0] == 401
    assert get_json(node.url + "/api/v1/events")[0] == 401
    shot(page, "dashboard-signin")
    # a wrong token is refused and still shows nothing
    page.fill("#token", "td_not-a-real-token")
    page.click("#signin-button")
    expect(page.locator("#signin-error")).to_contain_text("refused")
    expect(page.locator("#app")).to_be_hidden()


def test_sign_in_and_watch_a_job_finish_without_reload(
    lofar_node: Callable[..., LofarNode], redis_server: RedisServer, page: Page,
    nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=3 * MiB)
    node, _, client = lofar_node()
    operator = create_token("ops", "operator", redis_url=redis_server.url)
    # a failing file so the failures panel has something to group
    failed = client.submit([{"source": f"{nginx_server.url}/missing.bin",
                             "destination": f"file://{dest}/missing.bin"}], {"max_retries": 0})
    wait_until(lambda: client.job(failed["job_id"])["state"] == "FAILED", 30, "a failed job")
    job_id = slow_job(nginx_server, proxy, dest, client, "subband-042.tar", 48 * MiB,
                      activity="lofar-pipeline")

    sign_in(page, node, operator)
    page.evaluate("window.__noReload = 'still here'")
    expect(page.locator("#scope")).to_contain_text("all tenants")
    row = page.locator(f'[data-live-job="{job_id}"]')
    expect(row).to_be_visible(timeout=30_000)
    expect(page.locator(".failures")).to_contain_text("not_found")
    expect(page.locator(".tile.active .tile-value")).not_to_have_text("0", timeout=20_000)
    expect(page.locator(".active-table .file-row")).to_contain_text("subband-042.tar",
                                                                      timeout=20_000)
    page.wait_for_function(
        "() => { const b = document.querySelector('.tile.rate .tile-value');"
        " return b && b.textContent.includes('/s'); }", timeout=20_000)
    # the node samples throughput every 10 s into per-minute buckets: wait for the first
    expect(page.locator(".chart .chart-empty")).to_have_count(0, timeout=30_000)
    shot(page, "dashboard-overview-1280x800")
    if os.environ.get("TRANSFERD_REFRESH_DOCS") == "1":
        shutil.copyfile(ARTIFACTS / "dashboard-overview-1280x800.png",
                        REPO / "docs" / "dashboard.png")

    row.locator("a").first.click()
    expect(page.locator("#job-state")).to_contain_text("active")
    bar = expect_progress_to_grow(page)
    shot(page, "dashboard-job-active")
    expect(page.locator("#job-state")).to_contain_text("finished", timeout=60_000)
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("tr[data-file] .pill")).to_have_text("finished")
    assert page.evaluate("window.__noReload") == "still here"
    assert client.job(job_id)["state"] == "FINISHED"
    shot(page, "dashboard-job-finished")

    # the job list finds it by its activity
    page.click("#tabs a[data-tab=jobs]")
    page.fill("input[type=search]", "lofar-pipe")
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_be_visible()
    expect(page.locator(f'tr[data-job="{failed["job_id"]}"]')).to_be_hidden()
    shot(page, "dashboard-jobs")


def test_cancel_a_running_job_from_its_page(
    lofar_node: Callable[..., LofarNode], page: Page, nginx_server: NginxServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=1 * MiB)
    node, token, client = lofar_node()
    job_id = slow_job(nginx_server, proxy, dest, client, "slow.bin", 64 * MiB)
    wait_until(lambda: client.job(job_id)["totals"]["bytes_done"] > 0, 30, "bytes to move")

    sign_in(page, node, token)
    page.evaluate(f"location.hash = '#/jobs/{job_id}'")
    expect(page.locator("#job-state")).to_contain_text("active")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-job")
    expect(page.locator("#job-state")).to_contain_text("canceled")
    expect(page.locator("#cancel-job")).to_have_count(0)
    expect(page.locator("#retry-job")).to_be_visible()
    shot(page, "dashboard-job-canceled")
    assert client.job(job_id)["state"] == "CANCELED"
    assert client.files(job_id)["files"][0]["state"] == "CANCELED"


def test_the_page_reconnects_after_its_stream_drops_and_misses_nothing(
    lofar_node: Callable[..., LofarNode], page: Page, nginx_server: NginxServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    node, token, client = lofar_node()
    between = fault_proxy(node.url)  # the browser reaches the node through this
    sign_in(page, node, token, url=between.url)
    page.evaluate("window.__noReload = 'still here'")
    page.click("#tabs a[data-tab=jobs]")
    expect(page.locator("#live")).to_have_class("live ok")

    # the network drops and stays down: the page says so
    between.set(stalled=True)
    between.drop_connections()
    expect(page.locator("#live")).to_have_class("live")
    expect(page.locator("#live-text")).to_have_text("reconnecting")

    # a job starts and ends while the page cannot hear of it
    (nginx_server.root / "gap.bin").write_bytes(os.urandom(1000))
    job_id = client.submit([{"source": f"{nginx_server.url}/gap.bin",
                             "destination": f"file://{dest}/gap.bin"}], {})["job_id"]
    wait_until(lambda: client.job(job_id)["state"] == "FINISHED", 30, "the job to finish")
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_count(0)

    # back online: the page reconnects by itself, hears what it missed, shows the job
    between.set(stalled=False)
    expect(page.locator("#live")).to_have_class("live ok", timeout=30_000)
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row).to_be_visible(timeout=30_000)
    expect(row).to_contain_text("finished")
    assert page.evaluate("window.__noReload") == "still here"


def test_a_failure_group_links_to_its_failed_files(
    lofar_node: Callable[..., LofarNode], page: Page, nginx_server: NginxServer, dest: Path,
) -> None:
    node, token, client = lofar_node()
    (nginx_server.root / "here.bin").write_bytes(os.urandom(1000))
    job_id = client.submit(
        [{"source": f"{nginx_server.url}/here.bin", "destination": f"file://{dest}/here.bin"},
         {"source": f"{nginx_server.url}/nowhere.bin",
          "destination": f"file://{dest}/nowhere.bin"}],
        {"max_retries": 0},
    )["job_id"]
    wait_job(client, job_id, timeout_s=30)

    sign_in(page, node, token)
    group = page.locator(".failures li", has_text="not_found")
    expect(group).to_be_visible(timeout=30_000)
    expect(group.locator(".fail-count")).to_have_text("1 file")
    group.locator(".fail-count").click()
    # the job's page, showing only its failed file, with the reason
    expect(page.locator("#job-state")).to_be_visible()
    assert page.url.endswith(f"#/jobs/{job_id}?state=FAILED")
    files = page.locator("tr[data-file]")
    expect(files).to_have_count(1)
    expect(files).to_contain_text("nowhere.bin")
    expect(files.locator(".pill")).to_have_text("failed")
    expect(page.locator("body")).to_contain_text("404")


def test_a_reader_sees_its_tenant_only_and_is_offered_no_actions(
    lofar_node: Callable[..., LofarNode], redis_server: RedisServer, page: Page,
    nginx_server: NginxServer, fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=1 * MiB)
    node, _, lofar = lofar_node()
    other = Client(node.url, create_token("astro", "submitter", redis_url=redis_server.url))
    mine = slow_job(nginx_server, proxy, dest, lofar, "mine.bin", 32 * MiB)
    theirs = slow_job(nginx_server, proxy, dest, other, "theirs.bin", 32 * MiB)
    reader = create_token("lofar", "reader", redis_url=redis_server.url)

    sign_in(page, node, reader)
    expect(page.locator("#scope")).to_have_text("lofar · reader")
    expect(page.locator(f'[data-live-job="{mine}"]')).to_be_visible(timeout=30_000)
    expect(page.locator(f'[data-live-job="{theirs}"]')).to_have_count(0)
    assert theirs not in page.inner_text("body")
    page.evaluate(f"location.hash = '#/jobs/{mine}'")
    expect(page.locator("#job-state")).to_be_visible()
    expect(page.locator("#cancel-job")).to_have_count(0)
    page.evaluate(f"location.hash = '#/jobs/{theirs}'")
    expect(page.locator(".card h2")).to_contain_text(["No such job"])
    lofar.cancel(mine)
    other.cancel(theirs)


def test_phone_width_keeps_the_page_usable(
    lofar_node: Callable[..., LofarNode], browser: Browser, nginx_server: NginxServer,
    fault_proxy: Callable[[str], FaultProxy], dest: Path,
) -> None:
    proxy = fault_proxy(nginx_server.url)
    proxy.set(throttle_bps=2 * MiB)
    node, token, client = lofar_node("operator")
    job_id = slow_job(nginx_server, proxy, dest, client, "phone.bin", 16 * MiB)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    try:
        sign_in(phone, node, token)
        expect(phone.locator(f'[data-live-job="{job_id}"]')).to_be_visible(timeout=30_000)
        overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px"
        shot(phone, "dashboard-phone")
        phone.evaluate(f"location.hash = '#/jobs/{job_id}'")
        expect(phone.locator("#cancel-job")).to_be_visible()
        assert phone.locator("#cancel-job").bounding_box()["width"] > 100  # type: ignore[index]
        shot(phone, "dashboard-phone-job")
    finally:
        context.close()
    client.cancel(job_id)


def test_shares_panel_says_when_ocm_is_not_enabled(
    lofar_node: Callable[..., LofarNode], page: Page,
) -> None:
    node, token, _ = lofar_node()  # no [ocm] section: the share routes are absent
    assert get_json(node.url + "/api/v1/shares?state=pending", token)[0] == 404
    sign_in(page, node, token)
    page.click("#tabs a[data-tab=shares]")
    expect(page.locator("#app")).to_contain_text("OCM not enabled on this node")


def test_openapi_describes_the_dashboard_routes(redis_url: str) -> None:
    from transferd.config import NodeConfig
    from transferd.node import build_app
    from transferd.openapi import openapi_document

    app = build_app(NodeConfig(), redis_url)
    mine = {"/api/v1/summary", "/api/v1/events"}
    routes = {(r.method.lower(), r.resource.canonical.removeprefix("/api/v1"))
              for r in app.router.routes()
              if r.resource is not None and r.resource.canonical in mine and r.method != "HEAD"}
    described = openapi_document(dashboard=True)["paths"]
    assert routes == {("get", "/summary"), ("get", "/events")}
    assert all(method in described[path] for method, path in routes)


# -- the event stream without a browser ------------------------------------------------------


def read_events(url: str, token: str, until: Callable[[list[dict[str, Any]]], bool],
                last_event_id: str | None = None) -> list[dict[str, Any]]:
    """Server-sent events from /api/v1/events, parsed, until ``until(events)`` holds."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    request = urllib.request.Request(url + "/api/v1/events", headers=headers)
    events: list[dict[str, Any]] = []
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        while not until(events):
            line = resp.readline().decode().rstrip("\n")
            if line == "":
                if "data" in current:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                key, _, val = line.partition(": ")
                current[key] = val
    return events


def test_event_stream_is_tenant_filtered_and_resumes_from_last_event_id(
    node_factory: Callable[..., Node], redis_server: RedisServer, dest: Path,
) -> None:
    node = node_factory(allow_roots=[dest], workers=0)  # nothing moves: only submit events
    tokens = {who: create_token(tenant, role, redis_url=redis_server.url)
              for who, tenant, role in (("alice", "lofar", "submitter"),
                                        ("bob", "astro", "submitter"),
                                        ("ops", "ops", "operator"))}
    alice, bob = Client(node.url, tokens["alice"]), Client(node.url, tokens["bob"])

    def job(client: Client, name: str) -> str:
        return str(client.submit([{"source": f"http://example.org/{name}",
                                   "destination": f"file://{dest}/{name}"}], {})["job_id"])

    first_bob, first_alice = job(bob, "b1"), job(alice, "a1")
    def jobs_seen(evs: list[dict[str, Any]]) -> set[str]:
        return {e["data"]["job_id"] for e in evs if e["event"] == "job"}

    resumed = read_events(node.url, tokens["alice"], lambda evs: first_alice in jobs_seen(evs),
                          last_event_id="0-0")
    assert jobs_seen(resumed) == {first_alice}  # bob's job was in the stream, but not for alice
    hello = resumed[0]
    assert hello["event"] == "hello" and hello["data"]["tenant"] == "lofar"
    mark = next(e["id"] for e in resumed if e["event"] == "job")

    later_bob, later_alice = job(bob, "b2"), job(alice, "a2")
    again = read_events(node.url, tokens["alice"], lambda evs: later_alice in jobs_seen(evs),
                        last_event_id=mark)
    assert jobs_seen(again) == {later_alice}  # nothing before the mark, nothing of bob's
    progress = read_events(node.url, tokens["alice"],
                           lambda evs: any(e["event"] == "progress" for e in evs))
    live = {j["job_id"] for j in progress[-1]["data"]["jobs"]}
    assert live == {first_alice, later_alice}
    # a fresh stream's hello is its position: resuming from it misses nothing after it
    position = progress[0]["id"]
    assert progress[0]["event"] == "hello" and position == progress[0]["data"]["last_event_id"]
    gap_alice = job(alice, "a3")
    after = read_events(node.url, tokens["alice"], lambda evs: gap_alice in jobs_seen(evs),
                        last_event_id=position)
    assert jobs_seen(after) == {gap_alice}
    everyone = read_events(node.url, tokens["ops"], lambda evs: len(jobs_seen(evs)) == 5,
                           last_event_id="0-0")
    assert jobs_seen(everyone) == {first_bob, first_alice, later_bob, later_alice, gap_alice}
    status, problem = get_json(node.url + "/api/v1/events?last_event_id=nonsense",
                               tokens["alice"])
    assert status == 400 and "Last-Event-ID" in problem["detail"]
