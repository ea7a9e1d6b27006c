"""policies.routing: which backend a copy goes to and which link it loads."""

from __future__ import annotations

import pytest

from policies.routing import link_of, route


@pytest.mark.parametrize(
    ("source", "destination", "param", "backend"),
    [
        ("https://a.example/x", "file:///data/x", None, "stream"),
        ("https://a.example/x", "file:///data/x", "auto", "stream"),
        ("http://a.example/x", "davs://b.example/x", "", "stream"),
        ("dav://a.example/x", "dav://b.example/x", None, "stream"),
        ("file:///a", "file:///b", None, "stream"),
        ("HTTPS://A.example/x", "FILE:///b", None, "stream"),
        ("rucio://scope/name", "file:///data", None, "rucio"),
        ("https://a.example/x", "rucio://SURF_DISK", None, "rucio"),
        ("rclone://remote/path", "file:///data", None, "rclone"),
        ("https://a.example/x", "rclone://remote/x", None, "rclone"),
        ("https://a.example/x", "file:///data/x", "fts", "fts"),  # explicit wins
        ("rucio://scope/name", "file:///data", "stream", "stream"),
        ("https://a.example/x", "https://b.example/x", "rclone", "rclone"),
    ],
)
def test_route(source: str, destination: str, param: str | None, backend: str) -> None:
    assert route(source, destination, param) == backend


@pytest.mark.parametrize(
    ("source", "destination", "param"),
    [
        ("s3://bucket/x", "file:///data/x", None),
        ("gsiftp://a.example/x", "https://b.example/x", "auto"),
        ("not a url", "file:///x", None),
        ("https://a.example/x", "file:///x", "ftp"),
    ],
)
def test_route_refuses_what_no_backend_handles(
    source: str, destination: str, param: str | None
) -> None:
    with pytest.raises(ValueError):
        route(source, destination, param)


@pytest.mark.parametrize(
    ("source", "destination", "link"),
    [
        ("https://a.example/x", "file:///data/x", "a.example -> local"),
        ("https://A.Example:8443/x", "davs://b.example/remote.php/dav", "a.example -> b.example"),
        ("https://user:pw@a.example/x", "https://b.example", "a.example -> b.example"),
        ("http://[2001:db8::1]:8080/x", "file://localhost/x", "2001:db8::1 -> local"),
        ("file:///a", "file:///b", "local -> local"),
        ("rucio://scope/name", "file:///d", "scope -> local"),
        ("rucio:scope:name", "file:///d", "rucio -> local"),
        ("https://a.example?x=1", "https://b.example#f", "a.example -> b.example"),
    ],
)
def test_link_of(source: str, destination: str, link: str) -> None:
    assert link_of(source, destination) == link
