"""Real OCM peers for the tests: two transferd nodes with [ocm] configured, and ``OcmPeer``.

``OcmPeer`` is a small OCM provider of another make (aiohttp, in a loop thread):
discovery at ``/.well-known/ocm``, a token endpoint taking either request shape
(each switchable), ``/ocm/notifications``, files under ``/dav/`` behind a bearer
check, and a mesh directory document at ``/directory``.  It records every
request by kind, never a credential itself.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from tests.node_proc import TRANSFERD, Node, create_token
from tests.peers import LoopThread, _start_app
from transferd.client import Client


@dataclass
class OcmNode:
    node: Node
    client: Client
    token: str
    redis_url: str
    host: str  # host:port as peers address it
    key_file: Path

    def api(self, method: str, path: str, body: Any = None,
            query: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.client._request(method, path, body=body, query=query)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*TRANSFERD, *args, "--url", self.node.url, "--token", self.token],
            capture_output=True, text=True, timeout=60,
        )

    def log(self) -> str:
        return "".join(self.node.proc.log)


def write_config(path: Path, *, provider: str, directory: Path, key_file: Path,
                 recipients: dict[str, dict[str, Any]], criteria: list[str] = (),  # type: ignore[assignment]
                 public_url: str | None = None, token_ttl_s: float = 300) -> Path:
    lines = ["[ocm]", f'provider = "{provider}"', "allow_http = true",
             f'directory_file = "{directory}"', f'key_file = "{key_file}"',
             f"criteria = {json.dumps(list(criteria))}", f"token_ttl_s = {token_ttl_s}"]
    if public_url:
        lines.append(f'public_url = "{public_url}"')
    for user, r in recipients.items():
        auto = str(r.get("auto_accept", False)).lower()
        lines += [f"[ocm.recipients.{user}]", f'tenant = "{r["tenant"]}"',
                  f'root = "{r["root"]}"', f"auto_accept = {auto}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_ocm_node(
    node_factory: Callable[..., Node], tmp: Path, name: str, db: int, base_redis_url: str, *,
    directory: Path, recipients: dict[str, dict[str, Any]], allow_roots: list[Path] = (),  # type: ignore[assignment]
    criteria: list[str] = (),  # type: ignore[assignment]
    public_url: str | None = None, port: int | None = None, workers: int = 4,
    token_ttl_s: float = 300, extra: list[str] = (),  # type: ignore[assignment]
) -> OcmNode:
    redis_url = base_redis_url.rsplit("/", 1)[0] + f"/{db}"
    key_file = tmp / f"{name}-ed25519.pem"
    config = write_config(tmp / f"{name}.toml", provider=name, directory=directory,
                          key_file=key_file, recipients=recipients, criteria=criteria,
                          public_url=public_url, token_ttl_s=token_ttl_s)
    args = ["--config", str(config), *extra] + (["--port", str(port)] if port else [])
    node = node_factory(redis_url=redis_url, allow_roots=allow_roots, extra=args,
                        workers=workers)
    token = create_token("lab", "submitter", redis_url=redis_url)
    host = urlsplit(public_url or node.url).netloc
    return OcmNode(node, Client(node.url, token), token, redis_url, host, key_file)


def post_json(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST ``body`` as JSON: the status and the decoded answer, an error's as well."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def write_directory(path: Path, hosts: list[str]) -> None:
    """An OCM Directory Service document listing ``hosts``."""
    servers = [{"url": f"http://{h}", "displayName": h} for h in hosts]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"federation": "test mesh", "servers": servers}))
    tmp.replace(path)


@dataclass
class TokenRequest:
    """One request to the peer's token endpoint, without the code itself."""

    shape: str  # "form" | "json" | "other"
    grant_type: str
    client_id: str
    code_ok: bool  # the code was the share's secret
    status: int


@dataclass
class FileRequest:
    method: str
    path: str
    credential: str  # "token" (exchanged), "secret", "none" or "other"
    status: int


@dataclass
class OcmPeer:
    """A hand-written OCM provider; change its fields while it runs."""

    root: Path  # served under /dav/
    secret: str = ""  # the share secret it accepts (files, and codes to exchange)
    access_token: str = ""  # what its token endpoint issues; files take it when set
    accept_form: bool = True  # draft-05: form-encoded grant_type=authorization_code
    accept_json: bool = True  # v1.1: JSON grant_type=ocm_authorization_code
    form_refusal_status: int = 400
    expires_in_s: int = 300
    directory: bytes = b'{"federation": "test mesh", "servers": []}'
    directory_status: int = 200
    port: int = 0
    discovery_requests: int = 0
    directory_requests: int = 0
    token_requests: list[TokenRequest] = field(default_factory=list)
    file_requests: list[FileRequest] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    _loop: LoopThread | None = None
    _runner: web.AppRunner | None = None

    @classmethod
    def start(cls, loop: LoopThread, root: Path, **fields: Any) -> OcmPeer:
        root.mkdir(parents=True, exist_ok=True)
        peer = cls(root, **fields)
        app = web.Application()
        app.router.add_get("/.well-known/ocm", peer._discovery)
        app.router.add_get("/ocm-provider", peer._discovery)
        app.router.add_post("/ocm/token", peer._token)
        app.router.add_post("/ocm/notifications", peer._notification)
        app.router.add_get("/directory", peer._directory)
        app.router.add_route("*", "/dav/{name:.*}", peer._file)
        peer._runner, peer.port = loop.run(_start_app(app))
        peer._loop = loop
        return peer

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            self._loop.run(self._runner.cleanup())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def share_body(self, share_with: str, name: str, uri: str, *, resource_type: str = "file",
                   requirements: list[str] = (),  # type: ignore[assignment]
                   provider_id: str = "peer-1") -> dict[str, Any]:
        """An OCM 1.3 datatx share from carol@this peer."""
        webdav: dict[str, Any] = {"uri": uri, "sharedSecret": self.secret,
                                  "permissions": ["read"], "accessTypes": ["datatx"]}
        if requirements:
            webdav["requirements"] = list(requirements)
        return {"shareWith": share_with, "name": name, "providerId": provider_id,
                "owner": f"carol@{self.host}", "sender": f"carol@{self.host}",
                "shareType": "user", "resourceType": resource_type,
                "protocol": {"name": "multi", "webdav": webdav}}

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_requests += 1
        return web.json_response({
            "enabled": True, "apiVersion": "1.1.0", "endPoint": f"{self.url}/ocm",
            "provider": "peer", "capabilities": ["/notifications"],
            "resourceTypes": [{"name": "file", "shareTypes": ["user"],
                               "protocols": {"webdav": "/dav/"}}],
            "tokenEndPoint": f"{self.url}/ocm/token",
        })

    async def _token(self, request: web.Request) -> web.Response:
        raw = await request.read()
        fields: dict[str, Any] = {}
        shape = "other"
        if request.content_type == "application/x-www-form-urlencoded":
            shape, fields = "form", dict(parse_qsl(raw.decode()))
        elif request.content_type == "application/json":
            shape = "json"
            with_json = json.loads(raw)
            fields = with_json if isinstance(with_json, dict) else {}
        grant, client = str(fields.get("grant_type", "")), str(fields.get("client_id", ""))
        code_ok = bool(self.secret) and fields.get("code") == self.secret
        understood = {("form", "authorization_code"): self.accept_form,
                      ("json", "ocm_authorization_code"): self.accept_json}
        if understood.get((shape, grant)):
            status = 200 if code_ok and client else 401
        elif shape == "form":
            status = self.form_refusal_status
        else:
            status = 400
        self.token_requests.append(TokenRequest(shape, grant, client, code_ok, status))
        if status != 200:
            return web.json_response({"error": "invalid_request"}, status=status)
        return web.json_response({"access_token": self.access_token, "token_type": "Bearer",
                                  "expires_in": self.expires_in_s})

    async def _notification(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.json_response({}, status=201)

    async def _directory(self, request: web.Request) -> web.Response:
        self.directory_requests += 1
        return web.Response(body=self.directory, status=self.directory_status,
                            content_type="application/json")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        credential = {"": "none", f"Bearer {self.access_token}": "token",
                      f"Bearer {self.secret}": "secret"}.get(auth, "other")
        # with a token endpoint in use, only an exchanged token opens the files
        wanted = "token" if self.access_token else "secret"
        path = self.root / request.match_info["name"]
        response: web.StreamResponse
        if credential != wanted:
            status, response = 401, web.Response(status=401,
                                                 headers={"WWW-Authenticate": "Bearer"})
        elif request.method not in ("GET", "HEAD"):
            status, response = 405, web.Response(status=405)
        elif not path.is_file():
            status, response = 404, web.Response(status=404)
        else:
            status, response = 200, web.FileResponse(path)
        self.file_requests.append(FileRequest(request.method, request.path, credential,
                                              status))
        return response
