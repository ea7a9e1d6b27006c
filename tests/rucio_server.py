"""A real Rucio server for the tests (PROTOCOLS.md §4), started once per session.

``rucio_server`` -> RucioServer: rucio (the server package, the same version as
our rucio-clients) from its own virtualenv (``TRANSFERD_RUCIO_VENV``, default
``~/.cache/transferd-test/rucio-venv``; created here when missing, as
scripts/setup does), sqlite in a temp dir, gunicorn on 127.0.0.1 at an
ephemeral port, and the conveyor (submitter → poller → finisher with the fts3
transfertool) in the same process: see tests/rucio_launcher.py.

Tests build their own small world on it with :class:`RucioLab`: two RSEs per
test whose storage is a WebDAV server (``nginx_server``) and whose ``fts``
attribute is a transferd node's ``/fts3`` façade, so Rucio's conveyor submits
its transfers to transferd and transferd's movers copy the bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import itertools
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.node_proc import Proc, wait_until
from workers.rucio import RucioSettings, make_client

__all__ = ["Rse", "RucioLab", "RucioServer", "rucio_python", "rucio_server"]

USERNAME = "ddmlab"
PASSWORD = "secret"
ACCOUNT = "root"
LAUNCHER = Path(__file__).with_name("rucio_launcher.py")
# Rucio's protocol domains: read/write/delete locally and as third-party-copy endpoints
DOMAINS = {
    "lan": {"read": 1, "write": 1, "delete": 1},
    "wan": {"read": 1, "write": 1, "delete": 1,
            "third_party_copy_read": 1, "third_party_copy_write": 1},
}
_names = itertools.count(1)


def rucio_venv() -> Path:
    default = Path.home() / ".cache" / "transferd-test" / "rucio-venv"
    return Path(os.environ.get("TRANSFERD_RUCIO_VENV", default))


def rucio_python() -> Path:
    """The Rucio server venv's python; (re)creates the venv when it lacks our rucio version."""
    venv = rucio_venv()
    python = venv / "bin" / "python"
    version = importlib.metadata.version("rucio-clients")
    check = (f"import importlib.metadata as m, sys; "
             f"sys.exit(m.version('rucio') != {version!r})")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest sessions must not both install
        if python.exists() and subprocess.run([python, "-c", check]).returncode == 0:
            return python
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"rucio=={version}", "gunicorn"],
            check=True, timeout=900,
        )
    return python


def rucio_cfg(directory: Path) -> str:
    """The server's rucio.cfg.  No ``multi_vo`` line at all: Rucio reads any value as true."""
    return f"""[common]
loglevel = INFO
logdir = {directory}

[database]
default = sqlite:///{directory / "rucio.db"}

[bootstrap]
userpass_identity = {USERNAME}
userpass_pwd = {PASSWORD}

[cache]
# nothing listens here: Rucio falls back to no cache instead of a memcached it finds
url = 127.0.0.1:1

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash

[monitor]
enable_metrics = False
"""


@dataclass
class RucioServer:
    url: str
    proc: Proc
    directory: Path

    def settings(self) -> RucioSettings:
        token_dir = self.directory / "tokens"
        token_dir.mkdir(exist_ok=True)
        return RucioSettings(self.url, self.url, ACCOUNT, USERNAME, PASSWORD, str(token_dir))

    def env(self) -> dict[str, str]:
        """The environment a transferd worker needs to use this server."""
        s = self.settings()
        return {"TRANSFERD_RUCIO_HOST": s.host, "TRANSFERD_RUCIO_ACCOUNT": s.account,
                "TRANSFERD_RUCIO_USERNAME": s.username, "TRANSFERD_RUCIO_PASSWORD": s.password,
                "TRANSFERD_RUCIO_TOKEN_DIR": s.token_dir}

    def client(self) -> Any:
        return make_client(self.settings())

    def log_tail(self, chars: int = 6000) -> str:
        return "".join(self.proc.log)[-chars:]


def start_rucio(directory: Path) -> RucioServer:
    python = rucio_python()
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "rucio.cfg"
    cfg.write_text(rucio_cfg(directory))
    proc = Proc.start([str(python), str(LAUNCHER)], {"RUCIO_CONFIG": str(cfg)})
    try:
        line = proc.wait_for_line("rucio listening on", 120)
        url = line.strip().rsplit(" ", 1)[-1]
        wait_until(lambda: _pings(url), 30, f"Rucio at {url} to answer /ping")
    except BaseException:
        proc.stop()
        raise
    return RucioServer(url, proc, directory)


def _pings(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{url}/ping", timeout=2).status_code == 200
    return False


@pytest.fixture(scope="session")
def rucio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RucioServer]:
    server = start_rucio(tmp_path_factory.mktemp("rucio"))
    yield server
    server.proc.stop()


# -- a test's own corner of the server -----------------------------------------------------


@dataclass(frozen=True)
class Rse:
    """An RSE whose files live under ``url`` (a WebDAV server) and on disk under ``root``."""

    name: str
    url: str  # http://host:port/prefix/ as Rucio's protocol says
    root: Path  # the directory the WebDAV server serves ("/" of its URLs)

    def local_path(self, pfn: str) -> Path:
        return self.root / urlsplit(pfn).path.lstrip("/")


class RucioLab:
    """RSEs, a scope and replicas for one test, named uniquely on the shared server."""

    def __init__(self, server: RucioServer, fts_url: str) -> None:
        self.server = server
        self.client = server.client()
        self.fts_url = fts_url
        self.tag = f"T{os.getpid()}X{next(_names)}"
        self.scope = self.tag.lower()
        self.client.add_scope(ACCOUNT, self.scope)

    def add_rse(self, role: str, url: str, root: Path) -> Rse:
        """An RSE storing under ``url`` (reached through the FTS façade of ``fts_url``)."""
        rse = Rse(f"{self.tag}_{role.upper()}", url.rstrip("/") + "/", root)
        parts = urlsplit(rse.url)
        c = self.client
        c.add_rse(rse.name)
        c.add_protocol(rse.name, {
            "scheme": parts.scheme, "hostname": parts.hostname, "port": parts.port,
            "prefix": parts.path, "impl": "rucio.rse.protocols.webdav.Default",
            "domains": DOMAINS,
        })
        c.add_rse_attribute(rse.name, "fts", self.fts_url)
        c.set_local_account_limit(ACCOUNT, rse.name, -1)
        return rse

    def link(self, source: Rse, destination: Rse) -> None:
        self.client.add_distance(source.name, destination.name, {"distance": 1})

    def pfn(self, rse: Rse, name: str) -> str:
        answer = self.client.lfns2pfns(rse.name, [f"{self.scope}:{name}"], operation="write")
        return str(answer[f"{self.scope}:{name}"])

    def add_file(self, rse: Rse, name: str, data: bytes, *, on_disk: bool = True) -> dict[str, Any]:
        """Register ``name`` as a replica on ``rse``; write its bytes where Rucio will look."""
        if on_disk:
            path = rse.local_path(self.pfn(rse, name))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        did = {"scope": self.scope, "name": name, "bytes": len(data), "adler32": adler32(data)}
        self.client.add_replicas(rse.name, [did])
        return did

    def add_dataset(self, name: str, files: list[dict[str, Any]]) -> None:
        self.client.add_dataset(self.scope, name)
        self.client.attach_dids(self.scope, name,
                                [{"scope": f["scope"], "name": f["name"]} for f in files])

    def rules(self, name: str) -> list[dict[str, Any]]:
        return list(self.client.list_did_rules(self.scope, name))


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"
