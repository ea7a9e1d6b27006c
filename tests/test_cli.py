"""The ``transferd`` command, run as a real subprocess against a real HTTP peer.

``ContractPeer`` is an aiohttp server implementing the REST routes the client
commands use, as docs/contracts.md describes them (bearer auth, problem+json
errors naming the field, Idempotency-Key, cursor paging, ``Job.to_json()``
bodies).  Tests drive its files' states directly, as workers would.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web

from transferd.cli import ManifestError, parse_manifest
from transferd.embedded import EmbeddedRedis
from transferd.models import FileRecord, Job, JobParams
from transferd.states import FILE_TERMINAL, FileState, JobState, job_state

ALLOWED_ROOT = "file:///data/"
CLI_TIMEOUT_S = 60


def problem(status: int, title: str, detail: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "detail": detail}
    if field:
        body["field"] = field
        body["errors"] = [{"field": field, "message": detail}]
    return web.json_response(body, status=status, content_type="application/problem+json")


@dataclass
class PeerJob:
    job_id: str
    params: JobParams
    created_at: float
    files: list[FileRecord]
    cancel_requested: bool = False

    def to_job(self, owner: str) -> Job:
        counts = {s: 0 for s in FileState}
        for f in self.files:
            counts[f.state] += 1
        state = job_state(counts, cancel_requested=self.cancel_requested)
        active = [f for f in self.files if f.state is FileState.ACTIVE]
        terminal = state not in (JobState.SUBMITTED, JobState.ACTIVE)
        return Job(
            job_id=self.job_id, state=state, owner=owner, submitter="token:test",
            params=self.params, created_at=self.created_at, updated_at=time.time(),
            started_at=self.created_at if state is not JobState.SUBMITTED else None,
            finished_at=time.time() if terminal else None,
            files_total=len(self.files), files_by_state=counts,
            bytes_total=sum(f.size or 0 for f in self.files),
            bytes_done=sum(f.bytes_done for f in self.files),
            rate_bps=sum(f.rate_bps for f in active), cancel_requested=self.cancel_requested,
        )


@dataclass
class ContractPeer:
    """A faithful stand-in for a node's /api/v1, in memory, on an ephemeral port."""

    token: str = field(default_factory=lambda: "td_" + secrets.token_urlsafe(24))
    tenant: str = "lofar"
    jobs: dict[str, PeerJob] = field(default_factory=dict)
    idempotency: dict[str, str] = field(default_factory=dict)
    posts: list[dict[str, Any]] = field(default_factory=list)
    active_file_reads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    # -- what a worker would do --
    def set_file(self, job_id: str, index: int, state: FileState, bytes_done: int = 0,
                 rate_bps: float = 0.0, error_class: str | None = None) -> None:
        with self.lock:
            f = self.jobs[job_id].files[index]
            f.state, f.bytes_done, f.rate_bps = state, bytes_done, rate_bps
            f.error_class = error_class
            f.reason = f"{error_class} happened" if error_class else None
            if state is FileState.FINISHED:
                f.verified_checksum = f.checksum

    def reads_of_active_files(self) -> int:
        with self.lock:
            return self.active_file_reads

    # -- HTTP --
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth])
        app.router.add_get("/api/v1/health", self.health)
        app.router.add_post("/api/v1/jobs", self.post_job)
        app.router.add_get("/api/v1/jobs", self.list_jobs)
        app.router.add_get("/api/v1/jobs/{id}", self.get_job)
        app.router.add_delete("/api/v1/jobs/{id}", self.cancel_job)
        app.router.add_get("/api/v1/jobs/{id}/files", self.list_files)
        app.router.add_post("/api/v1/jobs/{id}/retry", self.retry_job)
        return app

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        if request.path != "/api/v1/health" and not authorized:
            return problem(401, "Unauthorized", "missing or invalid bearer credential")
        response: web.StreamResponse = await handler(request)
        return response

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def post_job(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return problem(400, "Bad Request", "the body is not JSON")
        files = body.get("files") if isinstance(body, dict) else None
        if not isinstance(files, list) or not files:
            return problem(400, "Bad Request", "at least one file is required", "files")
        specs = []
        for i, spec in enumerate(files):
            for key in ("source", "destination"):
                if not isinstance(spec.get(key), str):
                    return problem(400, "Bad Request", "a URL is required", f"files[{i}].{key}")
            if spec["destination"].startswith("file://") and not spec["destination"].startswith(
                ALLOWED_ROOT
            ):
                return problem(400, "Bad Request", "destination is outside the allowed roots",
                               f"files[{i}].destination")
            specs.append(spec)
        params = JobParams.from_json(body.get("params") or {})
        idem_key = request.headers.get("Idempotency-Key")
        with self.lock:
            if idem_key and idem_key in self.idempotency:
                known = self.idempotency[idem_key]
                state = self.jobs[known].to_job(self.tenant).state
                return web.json_response({"job_id": known, "state": state.value}, status=200)
            self.posts.append(body)
            job_id = secrets.token_hex(8)
            records = [
                FileRecord(
                    file_id=f"{job_id}.{i}", job_id=job_id, index=i, source=s["source"],
                    destination=s["destination"], state=FileState.SUBMITTED, size=s.get("size"),
                    checksum=s.get("checksum"), verified_checksum=None, bytes_done=0,
                    rate_bps=0.0, attempts=0, error_class=None, reason=None, not_before=None,
                    backend="stream", link="src -> local", lease_owner=None, lease_until=None,
                    started_at=None, finished_at=None, metadata=s.get("metadata") or {},
                )
                for i, s in enumerate(specs)
            ]
            self.jobs[job_id] = PeerJob(job_id, params, time.time(), records)
            if idem_key:
                self.idempotency[idem_key] = job_id
        return web.json_response({"job_id": job_id, "state": "SUBMITTED"}, status=201)

    def _job(self, request: web.Request) -> PeerJob:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            raise web.HTTPNotFound(
                text=json.dumps({"title": "Not Found", "status": 404, "detail": "no such job"}),
                content_type="application/problem+json",
            )
        return job

    async def get_job(self, request: web.Request) -> web.Response:
        with self.lock:
            return web.json_response(self._job(request).to_job(self.tenant).to_json())

    async def list_jobs(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        start = int(request.query.get("cursor") or 0)
        limit = int(request.query.get("limit") or 100)
        with self.lock:
            jobs = [j.to_job(self.tenant).to_json() for j in self.jobs.values()]
        if state:
            jobs = [j for j in jobs if j["state"] == state]
        page = jobs[start:start + limit]
        cursor = str(start + limit) if start + limit < len(jobs) else None
        return web.json_response({"jobs": page, "next_cursor": cursor})

    async def list_files(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        start = int(request.query.get("cursor") or 0)
        limit = int(request.query.get("limit") or 1000)
        with self.lock:
            files = [f.to_json() for f in self._job(request).files
                     if state is None or f.state.value == state]
            if state == "ACTIVE" and files:
                self.active_file_reads += 1
        page = files[start:start + limit]
        cursor = str(start + limit) if start + limit < len(files) else None
        return web.json_response({"files": page, "next_cursor": cursor})

    async def cancel_job(self, request: web.Request) -> web.Response:
        with self.lock:
            job = self._job(request)
            job.cancel_requested = True
            for f in job.files:
                if f.state not in FILE_TERMINAL:
                    f.state = FileState.CANCELED
            return web.json_response(job.to_job(self.tenant).to_json())

    async def retry_job(self, request: web.Request) -> web.Response:
        with self.lock:
            job = self._job(request)
            retried = 0
            for f in job.files:
                if f.state in (FileState.FAILED, FileState.CANCELED):
                    f.state, f.error_class, f.reason = FileState.SUBMITTED, None, None
                    retried += 1
            job.cancel_requested = False
            state = job.to_job(self.tenant).state.value
        return web.json_response({"job_id": job.job_id, "state": state, "retried": retried})


@pytest.fixture(scope="module")
def peer_server() -> Iterator[ContractPeer]:
    peer = ContractPeer()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner = web.AppRunner(peer.app(), access_log=None)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        peer.url = f"http://{host}:{port}"

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    yield peer
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


@pytest.fixture
def peer(peer_server: ContractPeer) -> ContractPeer:
    with peer_server.lock:
        peer_server.jobs.clear()
        peer_server.idempotency.clear()
        peer_server.posts.clear()
        peer_server.active_file_reads = 0
    return peer_server


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSFERD_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transferd", *args], env=env or cli_env(), input=stdin,
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )


def peer_env(peer: ContractPeer) -> dict[str, str]:
    return cli_env(TRANSFERD_URL=peer.url, TRANSFERD_TOKEN=peer.token)


def api_get(peer: ContractPeer, path: str) -> Any:
    request = urllib.request.Request(peer.url + "/api/v1" + path,
                                     headers={"Authorization": f"Bearer {peer.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def write_csv(path: Path, n: int, bad_line: int | None = None) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source", "destination", "size", "checksum"])
    for i in range(n):
        size = "12x" if bad_line == i + 2 else str(i * 10)
        writer.writerow([f"https://archive.example.org/L{i}.tar", f"file:///data/L{i}.tar",
                         size, f"adler32:{i:08x}"])
    path.write_text(out.getvalue())


# -- settings and errors --------------------------------------------------------------------


def test_missing_url_names_the_setting_and_exits_2() -> None:
    result = run_cli("status", "abc", env=cli_env(TRANSFERD_TOKEN="td_secret_value"))
    assert result.returncode == 2
    assert "TRANSFERD_URL" in result.stderr
    assert "td_secret_value" not in result.stderr + result.stdout


def test_missing_token_names_the_setting_and_exits_2(peer: ContractPeer) -> None:
    result = run_cli("ls", env=cli_env(TRANSFERD_URL=peer.url))
    assert result.returncode == 2
    assert "TRANSFERD_TOKEN" in result.stderr


def test_unreachable_node_is_one_sentence_and_exit_4() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        result = run_cli("status", "abc", env=cli_env(TRANSFERD_URL=url,
                                                      TRANSFERD_TOKEN="td_never_shown"))
    assert result.returncode == 4
    assert result.stderr.count("\n") == 1
    assert url in result.stderr and "td_never_shown" not in result.stderr


def test_a_refused_token_is_exit_5_and_never_printed(peer: ContractPeer) -> None:
    wrong = "td_wrong_" + secrets.token_hex(8)
    result = run_cli("ls", env=cli_env(TRANSFERD_URL=peer.url, TRANSFERD_TOKEN=wrong))
    assert result.returncode == 5
    assert "invalid bearer credential" in result.stderr
    assert wrong not in result.stderr + result.stdout


def test_a_rejected_request_names_the_field_and_hides_the_token(peer: ContractPeer) -> None:
    result = run_cli("submit", "https://a.org/x", "file:///etc/x", env=peer_env(peer))
    assert result.returncode == 2
    assert "files[0].destination" in result.stderr
    assert "outside the allowed roots" in result.stderr
    assert peer.token not in result.stderr + result.stdout
    assert peer.posts == []


def test_unknown_job_is_exit_6(peer: ContractPeer) -> None:
    result = run_cli("status", "nosuchjob", env=peer_env(peer))
    assert result.returncode == 6
    assert "no such job" in result.stderr


# -- submit --------------------------------------------------------------------------------


def test_submit_pairs_prints_only_the_job_id_and_sends_params(peer: ContractPeer) -> None:
    result = run_cli(
        "submit", "https://a.org/1.tar", "file:///data/1.tar",
        "https://a.org/2.tar", "file:///data/2.tar",
        "--checksum", "adler32", "--priority", "4", "--overwrite", "--max-retries", "5",
        env=peer_env(peer),
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert job_id in peer.jobs
    (body,) = peer.posts
    assert body["files"] == [
        {"source": "https://a.org/1.tar", "destination": "file:///data/1.tar",
         "checksum": "adler32"},
        {"source": "https://a.org/2.tar", "destination": "file:///data/2.tar",
         "checksum": "adler32"},
    ]
    assert body["params"] == {"priority": 4, "overwrite": True, "max_retries": 5}


def test_submit_odd_number_of_urls_is_a_usage_error(peer: ContractPeer) -> None:
    result = run_cli("submit", "https://a.org/1.tar", env=peer_env(peer))
    assert result.returncode == 2
    assert "no destination" in result.stderr
    assert peer.posts == []


def test_submit_json_prints_the_whole_answer(peer: ContractPeer) -> None:
    result = run_cli("submit", "https://a.org/1", "file:///data/1", "--json", env=peer_env(peer))
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer) == {"job_id", "state"} and answer["state"] == "SUBMITTED"


def test_resubmitting_with_the_same_idempotency_key_gives_the_same_job(
    peer: ContractPeer,
) -> None:
    args = ("submit", "https://a.org/1", "file:///data/1", "--idempotency-key", "run-42")
    first = run_cli(*args, env=peer_env(peer))
    second = run_cli(*args, env=peer_env(peer))
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    assert len(peer.jobs) == 1


def test_submit_csv_manifest_of_5000_lines(peer: ContractPeer, tmp_path: Path) -> None:
    manifest = tmp_path / "subbands.csv"
    write_csv(manifest, 5000)
    result = run_cli("submit", "--manifest", str(manifest), env=peer_env(peer))
    assert result.returncode == 0, result.stderr
    files = peer.posts[0]["files"]
    assert len(files) == 5000
    assert files[4999] == {"source": "https://archive.example.org/L4999.tar",
                           "destination": "file:///data/L4999.tar", "size": 49990,
                           "checksum": "adler32:00001387"}
    job = api_get(peer, f"/jobs/{result.stdout.strip()}")
    assert job["totals"]["files"] == 5000


def test_submit_jsonl_manifest_of_5000_lines_from_stdin(peer: ContractPeer) -> None:
    lines = [json.dumps({"source": f"davs://eos.example.org/f{i}", "size": i,
                         "destination": f"file:///data/f{i}", "metadata": {"sb": i}})
             for i in range(5000)]
    result = run_cli("submit", "--manifest", "-", "--checksum", "md5", env=peer_env(peer),
                     stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    files = peer.posts[0]["files"]
    assert len(files) == 5000
    assert files[17] == {"source": "davs://eos.example.org/f17", "destination": "file:///data/f17",
                         "size": 17, "checksum": "md5", "metadata": {"sb": 17}}


def test_a_bad_csv_line_is_named_with_its_field_and_nothing_is_submitted(
    peer: ContractPeer, tmp_path: Path
) -> None:
    manifest = tmp_path / "bad.csv"
    write_csv(manifest, 5000, bad_line=2718)
    result = run_cli("submit", "--manifest", str(manifest), env=peer_env(peer))
    assert result.returncode == 2
    assert f"{manifest} line 2718, field 'size'" in result.stderr
    assert "'12x'" in result.stderr
    assert peer.posts == []


def test_a_bad_jsonl_line_is_named_with_its_field(peer: ContractPeer, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.jsonl"
    rows = [{"source": "https://a.org/x", "destination": "file:///data/x"}] * 10
    rows[6] = {"source": "https://a.org/x", "destination": "file:///data/x",
               "checksum": "adler32:zz"}
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    result = run_cli("submit", "--manifest", str(manifest), env=peer_env(peer))
    assert result.returncode == 2
    assert "line 7, field 'checksum'" in result.stderr
    assert peer.posts == []


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("source,destinaton\nhttps://a/x,file:///d/x\n", 1, "destinaton", "unknown column"),
        ("source,size\nhttps://a/x,1\n", 1, "destination", "no such column"),
        ("source,destination\nhttps://a/x\n", 2, None, "1 fields, the header has 2"),
        ("source,destination\n\n# a comment\n,file:///d/x\n", 4, "source", "missing"),
        ("source,destination\nhttps://a/x,/d/x\n", 2, "destination", "not a URL"),
        ("source,destination,size\nhttps://a/x,file:///d/x,-1\n", 2, "size", "whole number"),
        ("source,destination,checksum\nhttps://a/x,file:///d/x,crc64:00\n", 2, "checksum",
         "unknown checksum algorithm"),
        ('{"source": "https://a/x", "destination": "file:///d/x"}\n{"source": 1}\n', 2,
         "source", "missing"),
        ('{"source": "https://a/x", "destination": "file:///d/x", "sise": 3}\n', 1, "sise",
         "unknown key"),
        ('{"source": "https://a/x", "destination": "file:///d/x", "size": true}\n', 1, "size",
         "whole number"),
        ('{"source": "https://a/x", "destination": "file:///d/x"}\n{not json\n', 2, None,
         "not valid JSON"),
        ('{"source": "https://a/x", "destination": "file:///d/x"}\n[1, 2]\n', 2, None,
         "expected a JSON object"),
        ("# only a comment\n\n", 1, None, "lists no files"),
        ("source,destination\n", 1, None, "lists no files"),
    ],
)
def test_manifest_errors_name_line_and_field(
    text: str, line: int, field: str | None, message: str
) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        parse_manifest(text, "m")
    assert caught.value.line == line
    assert caught.value.field == field


def test_manifest_formats_parse_to_the_same_specs() -> None:
    csv_text = ("\ufeffSource,Destination,Size,Checksum\n"
                "https://a/x,file:///d/x,10,ADLER32:0A1B2C3D\n"
                "https://a/y,file:///d/y,,\n")
    jsonl = ('{"source": "https://a/x", "destination": "file:///d/x", "size": 10, '
             '"checksum": "adler32:0a1b2c3d"}\n'
             '{"source": "https://a/y", "destination": "file:///d/y"}\n')
    expected = [
        {"source": "https://a/x", "destination": "file:///d/x", "size": 10,
         "checksum": "adler32:0a1b2c3d"},
        {"source": "https://a/y", "destination": "file:///d/y"},
    ]
    assert parse_manifest(csv_text.lstrip("\ufeff")) == expected
    assert parse_manifest(jsonl) == expected


# -- status, ls, files, cancel, retry ------------------------------------------------------


def submit(peer: ContractPeer, n: int, size: int = 1000) -> str:
    lines = [json.dumps({"source": f"https://a.org/{i}", "destination": f"file:///data/{i}",
                         "size": size}) for i in range(n)]
    result = run_cli("submit", "--manifest", "-", env=peer_env(peer), stdin="\n".join(lines))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_status_json_is_exactly_the_api_answer(peer: ContractPeer) -> None:
    job_id = submit(peer, 3)
    peer.set_file(job_id, 0, FileState.FINISHED, bytes_done=1000)
    result = run_cli("status", job_id, "--json", env=peer_env(peer))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    fetched = api_get(peer, f"/jobs/{job_id}")
    shown.pop("updated_at"), fetched.pop("updated_at")  # the peer stamps each answer
    assert shown == fetched
    assert shown["state"] == "ACTIVE"
    assert shown["totals"]["files_by_state"]["FINISHED"] == 1


def test_status_for_people_shows_state_and_totals(peer: ContractPeer) -> None:
    job_id = submit(peer, 2, size=2 * 1024 * 1024)
    peer.set_file(job_id, 0, FileState.ACTIVE, bytes_done=1024 * 1024, rate_bps=512 * 1024)
    result = run_cli("status", job_id, env=peer_env(peer))
    assert result.returncode == 0, result.stderr
    assert f"job {job_id}  ACTIVE" in result.stdout
    assert "1 submitted, 1 active" in result.stdout
    assert "1.0 MiB of 4.0 MiB at 512.0 KiB/s" in result.stdout


def test_ls_lists_every_page_and_filters_by_state(peer: ContractPeer) -> None:
    ids = [submit(peer, 1) for _ in range(3)]
    peer.set_file(ids[1], 0, FileState.FINISHED, bytes_done=1000)
    listed = run_cli("ls", "--json", env=peer_env(peer))
    assert listed.returncode == 0, listed.stderr
    assert sorted(j["job_id"] for j in json.loads(listed.stdout)["jobs"]) == sorted(ids)
    finished = run_cli("ls", "--state", "FINISHED", env=peer_env(peer))
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split("\t")[0] == ids[1]
    assert finished.stdout.count("\n") == 1


def test_files_pages_through_thousands_and_filters(peer: ContractPeer) -> None:
    job_id = submit(peer, 2500)
    peer.set_file(job_id, 1234, FileState.FAILED, error_class="checksum")
    every = run_cli("files", job_id, "--json", env=peer_env(peer))
    assert every.returncode == 0, every.stderr
    assert [json.loads(ln)["index"] for ln in every.stdout.splitlines()] == list(range(2500))
    failed = run_cli("files", job_id, "--state", "FAILED", env=peer_env(peer))
    assert failed.stdout.startswith("1234\tFAILED\t")
    assert "[checksum] checksum happened" in failed.stdout


def test_cancel_then_retry(peer: ContractPeer) -> None:
    job_id = submit(peer, 4)
    peer.set_file(job_id, 0, FileState.FINISHED, bytes_done=1000)
    canceled = run_cli("cancel", job_id, env=peer_env(peer))
    assert canceled.returncode == 0, canceled.stderr
    assert canceled.stdout.strip() == f"job {job_id}: CANCELED"
    retried = run_cli("retry", job_id, "--json", env=peer_env(peer))
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"job_id": job_id, "state": "ACTIVE", "retried": 3}


# -- watch ---------------------------------------------------------------------------------


def wait_until(predicate: Any, what: str, bound_s: float = 30.0) -> None:
    deadline = time.monotonic() + bound_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def start_watch(peer: ContractPeer, job_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "transferd", "watch", job_id, "--interval", "0.05"],
        env=peer_env(peer), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_watch_follows_active_files_and_exits_0_when_finished(peer: ContractPeer) -> None:
    job_id = submit(peer, 3, size=4096)
    watcher = start_watch(peer, job_id)
    peer.set_file(job_id, 0, FileState.ACTIVE, bytes_done=2048, rate_bps=1024.0)
    # The watcher has seen the ACTIVE file once it asked for ACTIVE files after the change.
    wait_until(lambda: peer.reads_of_active_files() >= 2, "watch to poll active files")
    for i in range(3):
        peer.set_file(job_id, i, FileState.FINISHED, bytes_done=4096)
    out, err = watcher.communicate(timeout=CLI_TIMEOUT_S)
    assert watcher.returncode == 0, err
    assert f"job {job_id}  FINISHED" in out
    assert "3 finished" in out


def test_watch_exits_3_when_the_job_ends_failed(peer: ContractPeer) -> None:
    job_id = submit(peer, 2)
    watcher = start_watch(peer, job_id)
    peer.set_file(job_id, 0, FileState.FINISHED, bytes_done=1000)
    peer.set_file(job_id, 1, FileState.FAILED, error_class="not_found")
    out, err = watcher.communicate(timeout=CLI_TIMEOUT_S)
    assert watcher.returncode == 3, err
    assert "FINISHEDDIRTY" in out


# -- token create --------------------------------------------------------------------------


def test_token_create_prints_only_the_token_into_a_running_nodes_store(tmp_path: Path) -> None:
    import hashlib

    state = tmp_path / "state"
    with EmbeddedRedis(state) as store:
        result = run_cli("token", "create", "--tenant", "lofar", "--role", "submitter",
                         "--name", "pipeline", "--state-dir", str(state))
        assert result.returncode == 0, result.stderr
        token = result.stdout.strip()
        assert result.stdout == token + "\n" and len(token) >= 20
        client = redis.Redis.from_url(store.url, decode_responses=True)
        record = client.hgetall(f"td:token:{hashlib.sha256(token.encode()).hexdigest()}")
        client.close()
    assert record["tenant"] == "lofar" and record["role"] == "submitter"
    assert token not in json.dumps(record)


def test_token_create_without_a_running_node_keeps_the_token_for_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = run_cli("token", "create", "--tenant", "t", "--role", "admin",
                     "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    assert not (state / "redis.sock").exists()  # the temporary server was stopped
    with EmbeddedRedis(state) as store:
        client = redis.Redis.from_url(store.url)
        assert len(client.keys("td:token:*")) == 1
        client.close()


def test_help_has_examples() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "transferd submit --manifest" in result.stdout
    assert "exit codes" in result.stdout


@pytest.mark.parametrize(
    ("problem_doc", "expected"),
    [
        ({"detail": "files[0].destination: outside the roots", "field": "files[0].destination",
          "errors": [{"field": "files[0].destination", "message": "outside the roots"},
                     {"field": "files[3].source", "message": "not a URL"}]},
         "files[0].destination: outside the roots (files[3].source: not a URL)"),
        ({"detail": "invalid request.", "field": "params.priority"},
         "invalid request (field: params.priority)"),
        ({"title": "Unauthorized"}, "Unauthorized"),
        ({}, "HTTP 400"),
    ],
)
def test_client_error_says_detail_and_fields_once(
    problem_doc: dict[str, Any], expected: str
) -> None:
    from transferd.client import ClientError

    assert str(ClientError(400, problem_doc)) == expected


def test_client_error_never_carries_the_token() -> None:
    from transferd.client import ClientError

    err = ClientError(401, {"detail": "token td_abc123xyz is not known"}, secret="td_abc123xyz")
    assert "td_abc123xyz" not in str(err)
