"""transferd as an OCM client of a peer of another make: discovery cache, token exchange, directory.

The peer is ``OcmPeer`` (tests/ocm_nodes.py), a real aiohttp server in its own
loop; transferd's client code runs in the test's loop, or in a `transferd serve`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.node_proc import Node, wait_job
from tests.ocm_nodes import OcmPeer, post_json, start_ocm_node, write_directory
from tests.peers import LoopThread
from transferd.errors import AuthError, RetryableError
from transferd.ocm.directory import TrustedProviders
from transferd.ocm.discovery import Discovery
from transferd.ocm.exchange import TokenExchanger, exchange_once

SECRET = "share-secret-8e1f0c2a77"
ACCESS = "exchanged-token-51b9d4e0"


@pytest.fixture
def peer(loop_thread: LoopThread, tmp_path: Path) -> Iterator[OcmPeer]:
    p = OcmPeer.start(loop_thread, tmp_path / "peer", secret=SECRET, access_token=ACCESS)
    yield p
    p.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Clock:
    """A monotonic clock the test moves by hand (the cache reads time, nothing else)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- discovery cache ---------------------------------------------------------------------


async def test_discovery_is_cached_for_its_ttl(
    peer: OcmPeer, session: aiohttp.ClientSession,
) -> None:
    clock = Clock()
    discovery = Discovery(session, allow_http=True, ttl_s=300.0, clock=clock)
    first = await discovery.provider(peer.host)
    assert first.endpoint == f"{peer.url}/ocm"
    assert first.token_endpoint == f"{peer.url}/ocm/token"
    assert first.webdav_root == f"{peer.url}/dav/"
    assert peer.discovery_requests == 1

    clock.now += 299.0  # still fresh: answered from the cache, no request
    assert await discovery.provider(peer.host) is first
    assert await discovery.provider(peer.host.upper()) is first  # host names are caseless
    assert peer.discovery_requests == 1

    clock.now += 1.5  # past the TTL: asked again
    again = await discovery.provider(peer.host)
    assert peer.discovery_requests == 2
    assert again == first and again is not first

    assert await discovery.provider(peer.host) is again  # the new answer is cached anew
    assert peer.discovery_requests == 2
    await discovery.provider(peer.host, refresh=True)  # an explicit refresh always asks
    assert peer.discovery_requests == 3


# -- token exchange: the v1.1 JSON fallback ------------------------------------------------


async def test_exchange_falls_back_to_the_v11_json_shape_and_the_token_opens_the_files(
    peer: OcmPeer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    (peer.root / "x.bin").write_bytes(b"payload")
    peer.accept_form = False  # an older Reva: form-encoded draft-05 requests get 400

    token, expires_s = await exchange_once(session, f"{peer.url}/ocm/token", "us.example",
                                           SECRET)
    assert (token, expires_s) == (ACCESS, 300.0)
    assert [(r.shape, r.grant_type, r.status) for r in peer.token_requests] == [
        ("form", "authorization_code", 400), ("json", "ocm_authorization_code", 200)]
    assert all(r.client_id == "us.example" and r.code_ok for r in peer.token_requests)

    peer.form_refusal_status = 415  # "Unsupported Media Type" is just as much a refusal
    exchanger = TokenExchanger(session, f"{peer.url}/ocm/token", "us.example", SECRET)
    headers = await exchanger.headers()
    assert headers == {"Authorization": f"Bearer {ACCESS}"}
    assert await exchanger.headers() == headers and exchanger.exchanges == 1  # still valid
    async with session.get(f"{peer.url}/dav/x.bin", headers=headers) as resp:
        assert (resp.status, await resp.read()) == (200, b"payload")
    # the peer opens its files for the exchanged token only, never for the secret
    async with session.get(f"{peer.url}/dav/x.bin",
                           headers={"Authorization": f"Bearer {SECRET}"}) as resp:
        assert resp.status == 401
    assert [(r.shape, r.status) for r in peer.token_requests[2:]] == [
        ("form", 415), ("json", 200)]
    assert SECRET not in caplog.text and SECRET not in repr(exchanger)


@pytest.mark.parametrize(("accept_form", "accept_json", "expires_in", "wanted"), [
    (False, False, 300, AuthError),  # neither shape understood
    (True, True, 300, None),  # the draft-05 shape first; no fallback needed
])
async def test_exchange_shapes_and_refusals_never_show_the_secret(
    peer: OcmPeer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
    accept_form: bool, accept_json: bool, expires_in: int, wanted: type[Exception] | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    peer.accept_form, peer.accept_json, peer.expires_in_s = accept_form, accept_json, expires_in
    endpoint = f"{peer.url}/ocm/token"
    if wanted is None:
        assert await exchange_once(session, endpoint, "us.example", SECRET) == (ACCESS, 300.0)
        assert [r.shape for r in peer.token_requests] == ["form"]
        return
    with pytest.raises(wanted) as err:
        await exchange_once(session, endpoint, "us.example", SECRET)
    assert [r.shape for r in peer.token_requests] == ["form", "json"]
    text = "".join(traceback.format_exception(err.value)) + repr(err.value)
    assert "refused both request shapes" in text
    assert SECRET not in text and SECRET not in caplog.text


async def test_exchange_failures_are_classified_without_the_secret(
    peer: OcmPeer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = f"{peer.url}/ocm/token"
    wrong = "not-the-secret-3f9a"
    with pytest.raises(AuthError) as refused:  # a wrong code: 401 on the first shape
        await exchange_once(session, endpoint, "us.example", wrong)
    assert refused.value.error_class == "auth" and not refused.value.retryable
    peer.stop()  # nobody listens any more: worth retrying later
    with pytest.raises(RetryableError) as gone:
        await exchange_once(session, endpoint, "us.example", SECRET)
    for exc in (refused.value, gone.value):
        text = "".join(traceback.format_exception(exc))
        assert SECRET not in text and wrong not in text
    assert SECRET not in caplog.text and wrong not in caplog.text


def test_share_needing_an_exchange_moves_with_the_json_fallback_token(
    node_factory: Callable[..., Node], redis_url: str, tmp_path: Path, peer: OcmPeer,
) -> None:
    """A real node receives a must-exchange-token share from a v1.1-only peer."""
    data = os.urandom(700_000)
    (peer.root / "x.bin").write_bytes(data)
    peer.accept_form = False
    inbox, mesh = tmp_path / "inbox", tmp_path / "mesh.json"
    b = start_ocm_node(node_factory, tmp_path, "b", 2, redis_url, directory=mesh,
                       recipients={"pipe": {"tenant": "lab", "root": str(inbox),
                                            "auto_accept": True}})
    write_directory(mesh, [peer.host, b.host])
    body = peer.share_body(f"pipe@{b.host}", "x.bin", "x.bin",  # relative to its webdav root
                           requirements=["must-exchange-token"])
    status, answer = post_json(f"{b.node.url}/ocm/shares", body)
    assert status == 201, answer
    share = b.api("GET", "/shares")["shares"][0]
    assert share["state"] == "accepted"
    job = wait_job(b.client, share["job_id"], {"FINISHED", "FAILED"})
    assert job["state"] == "FINISHED", b.client.files(share["job_id"])
    assert (inbox / "x.bin").read_bytes() == data

    # every exchange (at receipt, and the worker's own) tried draft-05, then v1.1 JSON
    shapes = [(r.shape, r.status) for r in peer.token_requests]
    assert len(shapes) >= 4 and shapes == [("form", 400), ("json", 200)] * (len(shapes) // 2)
    assert all(r.client_id == b.host and r.code_ok for r in peer.token_requests)
    # the file was read (HEAD at receipt, GET by the worker) with the exchanged token only
    assert {r.method for r in peer.file_requests} >= {"HEAD", "GET"}
    assert {(r.credential, r.status) for r in peer.file_requests} == {("token", 200)}

    answers = json.dumps([b.api("GET", "/shares"), b.client.job(share["job_id"]),
                          b.client.files(share["job_id"]), b.api("GET", "/transfers")])
    for text in (b.log(), answers):
        assert SECRET not in text and ACCESS not in text


# -- trusted directory from a URL ----------------------------------------------------------


def _servers(*hosts: str) -> bytes:
    return json.dumps({"federation": "test mesh", "servers": [
        {"url": f"https://{h}", "displayName": h} for h in hosts]}).encode()


def _provider_info(*hosts: str) -> bytes:
    return json.dumps([{"name": h, "full_name": h, "domain": h.partition(":")[0], "services": [
        {"host": h, "endpoint": {"type": {"name": "OCM"}, "path": "/ocm"}}]}
        for h in hosts]).encode()


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _refreshes(peer: OcmPeer, count: int) -> None:
    target = peer.directory_requests + count
    await _until(lambda: peer.directory_requests >= target, 10, f"{count} more refreshes")


async def test_directory_url_is_refreshed_periodically(
    peer: OcmPeer, session: aiohttp.ClientSession,
) -> None:
    peer.directory = _servers("a.example", "b.example:8443")
    trusted = TrustedProviders(static=["static.example"], url=f"{peer.url}/directory",
                               refresh_s=0.05)
    assert not trusted.is_trusted("a.example")  # nothing loaded yet: nobody but the static
    task = asyncio.create_task(trusted.run(session))
    try:
        await _until(lambda: trusted.is_trusted("a.example"), 10, "the first fetch")
        assert trusted.hosts() == {"static.example", "a.example", "b.example:8443"}

        # a provider joins, one leaves (and the mesh now publishes a CS3 ProviderInfo list)
        peer.directory = _provider_info("b.example:8443", "c.example")
        await _until(lambda: trusted.is_trusted("c.example"), 10, "c to be trusted")
        assert not trusted.is_trusted("a.example")
        assert trusted.hosts() == {"static.example", "b.example:8443", "c.example"}

        # the directory breaks: the last good list stays in force, never "everybody"
        for status, directory in ((500, b"oops"), (200, b"not json")):
            peer.directory_status, peer.directory = status, directory
            await _refreshes(peer, 2)
            assert trusted.hosts() == {"static.example", "b.example:8443", "c.example"}
            assert not trusted.is_trusted("evil.example")

        peer.directory_status, peer.directory = 200, _servers()
        await _until(lambda: not trusted.is_trusted("c.example"), 10, "an empty mesh")
        assert trusted.hosts() == {"static.example"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
