"""A real nginx on 127.0.0.1 at an ephemeral port, serving the data set to every contender.

GET with Range (sendfile), an HTML autoindex for folders (rclone's http remote
parses it) and PROPFIND through the dav_ext module (rclone's webdav remote,
transferd's folder expansion).  The access log records body bytes per request,
which is how the resume check counts wasted bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DAV_EXT_MODULE = Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")
_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 5


class NginxError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(root: Path, run_dir: Path, port: int) -> str:
    load = f"load_module {DAV_EXT_MODULE};\n" if DAV_EXT_MODULE.exists() else ""
    dav = "dav_ext_methods PROPFIND OPTIONS;" if load else ""
    # Workers drop to "nobody" by default, which cannot read a 0700 temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"  {name}_temp_path {run_dir / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{load}{user}daemon off;
worker_processes 2;
pid {run_dir / "nginx.pid"};
error_log {run_dir / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
{temp}
  log_format bytes '$request_method $uri $status $body_bytes_sent';
  access_log {run_dir / "access.log"} bytes;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 75s;
  keepalive_requests 100000;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{
      autoindex on;
      {dav}
    }}
  }}
}}
"""


class Nginx:
    """One nginx process; ``url`` is its base URL, without a trailing slash."""

    def __init__(self, root: Path, run_dir: Path) -> None:
        self.root = root
        self.run_dir = run_dir
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.run_dir / "access.log"

    def start(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        # Another process may take the port between our probe and nginx's bind.
        for _ in range(_PORT_ATTEMPTS):
            self.port = _free_port()
            conf = self.run_dir / "nginx.conf"
            conf.write_text(_config(self.root, self.run_dir, self.port))
            errors = (self.run_dir / "stderr.log").open("wb")
            self._proc = subprocess.Popen(
                [
                    binary,
                    "-c",
                    str(conf),
                    "-p",
                    str(self.run_dir),
                    "-e",
                    str(self.run_dir / "error.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
            errors.close()
            if self._wait_ready():
                return
            self.stop()
            last_error = (self.run_dir / "error.log").read_text(errors="replace")[-2000:]
        raise NginxError(f"nginx did not start: {last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1) as reply:
                    if reply.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def log_offset(self) -> int:
        """Where the access log ends now; pass it to ``bytes_sent_since``."""
        try:
            return self.access_log.stat().st_size
        except FileNotFoundError:
            return 0

    def bytes_sent_since(self, offset: int, uri: str) -> int:
        """Body bytes nginx sent for GETs of ``uri`` logged after ``offset``."""
        total = 0
        with self.access_log.open("rb") as log:
            log.seek(offset)
            for line in log.read().decode(errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 4 and parts[0] == "GET" and parts[1] == uri:
                    total += int(parts[3])
        return total


@contextlib.contextmanager
def serving(root: Path, run_dir: Path) -> Iterator[Nginx]:
    server = Nginx(root, run_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
