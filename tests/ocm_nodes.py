"""Two real transferd nodes with [ocm] configured, for the OCM end-to-end tests."""

from __future__ import annotations

import json
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.node_proc import TRANSFERD, Node, create_token
from transferd.client import Client

MiB = 1024 * 1024


def adler32_hex(path: Path) -> str:
    value = 1
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            value = zlib.adler32(block, value)
    return f"{value:08x}"


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
    token_ttl_s: float = 300,
) -> OcmNode:
    redis_url = base_redis_url.rsplit("/", 1)[0] + f"/{db}"
    key_file = tmp / f"{name}-ed25519.pem"
    config = write_config(tmp / f"{name}.toml", provider=name, directory=directory,
                          key_file=key_file, recipients=recipients, criteria=criteria,
                          public_url=public_url, token_ttl_s=token_ttl_s)
    extra = ["--config", str(config)] + (["--port", str(port)] if port else [])
    node = node_factory(redis_url=redis_url, allow_roots=allow_roots, extra=extra,
                        workers=workers)
    token = create_token("lab", "submitter", redis_url=redis_url)
    host = urlsplit(public_url or node.url).netloc
    return OcmNode(node, Client(node.url, token), token, redis_url, host, key_file)


def write_directory(path: Path, hosts: list[str]) -> None:
    """An OCM Directory Service document listing ``hosts``."""
    servers = [{"url": f"http://{h}", "displayName": h} for h in hosts]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"federation": "test mesh", "servers": servers}))
    tmp.replace(path)
