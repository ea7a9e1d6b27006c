"""The ``transferd`` command, run as a real subprocess against a real node.

One ``transferd serve`` without workers, on its own redis-server, serves the
whole module; each test gets a tenant and token of its own, so a tenant's job
list holds that test's jobs only.  With no worker running nothing moves by
itself: a test that needs files in given states moves them through the node's
store exactly as a worker does (``StoreWorker``: claim, heartbeat, finish,
fail), and the CLI sees them through the node's REST API.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import secrets
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio

from tests.node_proc import Node, create_token, start_node, wait_until
from tests.redis_server import start_redis
from tests.terminal import PtyCommand
from transferd.cli import ManifestError, parse_manifest
from transferd.client import Client
from transferd.embedded import EmbeddedRedis
from transferd.errors import ChecksumMismatch, NotFound, TransferError
from transferd.models import JobParams
from transferd.states import FileState
from transferd.store import JobStore

CLI_TIMEOUT_S = 60
WORKER_ID = "test-cli-worker"
LEASE_S = 3600.0  # the node's reaper must not take a file back while a test holds it
T = TypeVar("T")


# -- the node, and a worker's hands on its store ---------------------------------------------


class StoreWorker:
    """Moves a node's files through its real store as a worker does: claim, heartbeat,
    finish, fail.  File ids are ``{job_id}.{index}``."""

    def __init__(self, redis_url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._redis = redis.asyncio.Redis.from_url(redis_url)
        self.store = JobStore(self._redis)

    def _run(self, step: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(step)

    def start(self, job_id: str, index: int, bytes_done: int = 0, rate_bps: float = 0.0) -> None:
        """Claim the file (it turns ACTIVE) and report its first progress."""
        file_id = f"{job_id}.{index}"
        claimed = self._run(self.store.claim(file_id, WORKER_ID, LEASE_S))
        assert claimed is not None, f"{file_id} was not claimable"
        if bytes_done or rate_bps:
            self.progress(job_id, index, bytes_done, rate_bps)

    def progress(self, job_id: str, index: int, bytes_done: int, rate_bps: float) -> None:
        file_id = f"{job_id}.{index}"
        ok = self._run(self.store.heartbeat(file_id, WORKER_ID, bytes_done, rate_bps, LEASE_S))
        assert ok, f"the heartbeat for {file_id} was refused"

    def finish(self, job_id: str, index: int, size: int) -> None:
        """Finish the file (claiming it first unless it is already ours)."""
        file_id = f"{job_id}.{index}"
        if not self._active(file_id):
            self.start(job_id, index)
        ok = self._run(self.store.finish(file_id, WORKER_ID, "adler32:00000001", size))
        assert ok, f"{file_id} could not be finished"

    def fail(self, job_id: str, index: int, error: TransferError) -> None:
        """Report ``error`` for the file's attempt (claiming it first); it must end FAILED."""
        file_id = f"{job_id}.{index}"
        if not self._active(file_id):
            self.start(job_id, index)
        state = self._run(self.store.fail(file_id, WORKER_ID, error.error_class, error.reason,
                                          retryable=error.retryable))
        assert state is FileState.FAILED, f"{file_id} is {state} after the failure"

    def _active(self, file_id: str) -> bool:
        record = self._run(self.store.get_file(file_id))
        assert record is not None, f"no file {file_id}"
        return record.state is FileState.ACTIVE and record.lease_owner == WORKER_ID

    def close(self) -> None:
        self._run(self._redis.aclose())
        self._loop.close()


@dataclass
class Lab:
    node: Node
    redis_url: str
    root: Path  # the one directory file:// destinations may name
    worker: StoreWorker


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    server = start_redis(tmp_path_factory.mktemp("cli-redis"))
    root = tmp_path_factory.mktemp("cli-data").resolve()  # the API answers resolved paths
    try:
        node = start_node(tmp_path_factory.mktemp("cli-node"), redis_url=server.url,
                          workers=0, allow_roots=[root])
        worker = StoreWorker(server.url)
        try:
            yield Lab(node, server.url, root, worker)
        finally:
            worker.close()
            node.proc.stop()
    finally:
        server.proc.terminate()
        server.proc.wait(10)


@dataclass
class Tenant:
    """A tenant of the module's node with its own submitter token."""

    lab: Lab
    name: str
    token: str = field(repr=False)

    @property
    def url(self) -> str:
        return self.lab.node.url

    @property
    def env(self) -> dict[str, str]:
        return cli_env(TRANSFERD_URL=self.url, TRANSFERD_TOKEN=self.token)

    def dest(self, name: str) -> str:
        """A file:// destination URL under the node's allowed root."""
        return (self.lab.root / name).as_uri()

    def api_get(self, path: str, **query: str) -> Any:
        """The node's JSON answer to GET /api/v1{path}, read without transferd's client."""
        url = self.url + "/api/v1" + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def job_ids(self) -> list[str]:
        """The ids of every job the node lists for this tenant."""
        page = self.api_get("/jobs", limit="1000")
        assert page["next_cursor"] is None
        return [job["job_id"] for job in page["jobs"]]

    def files(self, job_id: str) -> list[dict[str, Any]]:
        """Every file of the job as the API lists it, page after page."""
        files: list[dict[str, Any]] = []
        query = {"limit": "1000"}
        while True:
            page = self.api_get(f"/jobs/{job_id}/files", **query)
            files += page["files"]
            if not page["next_cursor"]:
                return files
            query["cursor"] = page["next_cursor"]


@pytest.fixture
def tenant(lab: Lab) -> Tenant:
    name = "cli-" + secrets.token_hex(4)
    return Tenant(lab, name, create_token(name, "submitter", redis_url=lab.redis_url))


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


def as_sent(spec: dict[str, Any]) -> dict[str, Any]:
    """What a file record says of the spec it was submitted with."""
    return {"source": spec["source"], "destination": spec["destination"],
            "size": spec.get("size"), "checksum": spec.get("checksum"),
            "metadata": spec.get("metadata", {})}


def as_stored(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in ("source", "destination", "size", "checksum", "metadata")}


def write_csv(path: Path, tenant: Tenant, n: int, bad_line: int | None = None
              ) -> list[dict[str, Any]]:
    """A CSV manifest of ``n`` files; returns the specs it lists."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source", "destination", "size", "checksum"])
    specs = []
    for i in range(n):
        spec = {"source": f"https://archive.example.org/L{i}.tar",
                "destination": tenant.dest(f"L{i}.tar"), "size": i * 10,
                "checksum": f"adler32:{i:08x}"}
        size = "12x" if bad_line == i + 2 else str(spec["size"])
        writer.writerow([spec["source"], spec["destination"], size, spec["checksum"]])
        specs.append(spec)
    path.write_text(out.getvalue())
    return specs


# -- settings and errors --------------------------------------------------------------------


def test_missing_url_names_the_setting_and_exits_2() -> None:
    result = run_cli("status", "abc", env=cli_env(TRANSFERD_TOKEN="td_secret_value"))
    assert result.returncode == 2
    assert "TRANSFERD_URL" in result.stderr
    assert "td_secret_value" not in result.stderr + result.stdout


def test_missing_token_names_the_setting_and_exits_2(lab: Lab) -> None:
    result = run_cli("ls", env=cli_env(TRANSFERD_URL=lab.node.url))
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


def test_a_refused_token_is_exit_5_and_never_printed(lab: Lab) -> None:
    wrong = "td_wrong_" + secrets.token_hex(8)
    result = run_cli("ls", env=cli_env(TRANSFERD_URL=lab.node.url, TRANSFERD_TOKEN=wrong))
    assert result.returncode == 5
    assert "unknown or revoked API token" in result.stderr
    assert wrong not in result.stderr + result.stdout


def test_a_rejected_request_names_the_field_and_hides_the_token(tenant: Tenant) -> None:
    result = run_cli("submit", "https://a.org/x", "file:///etc/x", env=tenant.env)
    assert result.returncode == 2
    assert "files[0].destination" in result.stderr
    assert "outside the directories allowed" in result.stderr
    assert tenant.token not in result.stderr + result.stdout
    assert tenant.job_ids() == []


def test_unknown_job_is_exit_6(tenant: Tenant) -> None:
    result = run_cli("status", "nosuchjob", env=tenant.env)
    assert result.returncode == 6
    assert "no job 'nosuchjob'" in result.stderr


def test_another_tenants_job_is_exit_6_as_if_it_did_not_exist(
    tenant: Tenant, lab: Lab
) -> None:
    other = "cli-" + secrets.token_hex(4)
    theirs = Client(lab.node.url, create_token(other, "submitter", redis_url=lab.redis_url))
    answer = theirs.submit([{"source": "https://a.org/1", "destination": tenant.dest("1")}])
    result = run_cli("status", answer["job_id"], env=tenant.env)
    assert result.returncode == 6
    assert f"no job {answer['job_id']!r}" in result.stderr


# -- submit --------------------------------------------------------------------------------


def test_submit_pairs_prints_only_the_job_id_and_sends_params(tenant: Tenant) -> None:
    result = run_cli(
        "submit", "https://a.org/1.tar", tenant.dest("1.tar"),
        "https://a.org/2.tar", tenant.dest("2.tar"),
        "--checksum", "adler32", "--priority", "4", "--overwrite", "--max-retries", "5",
        env=tenant.env,
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert result.stdout == job_id + "\n"
    assert tenant.job_ids() == [job_id]
    assert [as_stored(f) for f in tenant.files(job_id)] == [
        {"source": "https://a.org/1.tar", "destination": tenant.dest("1.tar"), "size": None,
         "checksum": "adler32", "metadata": {}},
        {"source": "https://a.org/2.tar", "destination": tenant.dest("2.tar"), "size": None,
         "checksum": "adler32", "metadata": {}},
    ]
    # what was not given stays the node's default
    expected = JobParams(priority=4, overwrite=True, max_retries=5).to_json()
    assert tenant.api_get(f"/jobs/{job_id}")["params"] == expected


def test_submit_odd_number_of_urls_is_a_usage_error(tenant: Tenant) -> None:
    result = run_cli("submit", "https://a.org/1.tar", env=tenant.env)
    assert result.returncode == 2
    assert "no destination" in result.stderr
    assert tenant.job_ids() == []


def test_submit_json_prints_the_whole_answer(tenant: Tenant) -> None:
    result = run_cli("submit", "https://a.org/1", tenant.dest("1"), "--json", env=tenant.env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer) == {"job_id", "state"} and answer["state"] == "SUBMITTED"
    assert tenant.job_ids() == [answer["job_id"]]


def test_resubmitting_with_the_same_idempotency_key_gives_the_same_job(tenant: Tenant) -> None:
    args = ("submit", "https://a.org/1", tenant.dest("1"), "--idempotency-key", "run-42")
    first = run_cli(*args, env=tenant.env)
    second = run_cli(*args, env=tenant.env)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    assert tenant.job_ids() == [first.stdout.strip()]


def test_submit_csv_manifest_of_5000_lines(tenant: Tenant, tmp_path: Path) -> None:
    manifest = tmp_path / "subbands.csv"
    specs = write_csv(manifest, tenant, 5000)
    result = run_cli("submit", "--manifest", str(manifest), env=tenant.env)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    files = tenant.files(job_id)
    assert [f["index"] for f in files] == list(range(5000))
    assert [as_stored(f) for f in files] == [as_sent(s) for s in specs]
    assert files[4999]["checksum"] == "adler32:00001387"
    job = tenant.api_get(f"/jobs/{job_id}")
    assert job["totals"]["files"] == 5000
    assert job["totals"]["bytes_total"] == sum(s["size"] for s in specs)


def test_submit_jsonl_manifest_of_5000_lines_from_stdin(tenant: Tenant) -> None:
    specs = [{"source": f"davs://eos.example.org/f{i}", "size": i,
              "destination": tenant.dest(f"f{i}"), "metadata": {"sb": i}} for i in range(5000)]
    result = run_cli("submit", "--manifest", "-", "--checksum", "md5", env=tenant.env,
                     stdin="\n".join(json.dumps(s) for s in specs) + "\n")
    assert result.returncode == 0, result.stderr
    files = tenant.files(result.stdout.strip())
    assert len(files) == 5000
    assert [as_stored(f) for f in files] == [as_sent({**s, "checksum": "md5"}) for s in specs]
    assert as_stored(files[17]) == {"source": "davs://eos.example.org/f17",
                                    "destination": tenant.dest("f17"), "size": 17,
                                    "checksum": "md5", "metadata": {"sb": 17}}


def test_a_bad_csv_line_is_named_with_its_field_and_nothing_is_submitted(
    tenant: Tenant, tmp_path: Path
) -> None:
    manifest = tmp_path / "bad.csv"
    write_csv(manifest, tenant, 5000, bad_line=2718)
    result = run_cli("submit", "--manifest", str(manifest), env=tenant.env)
    assert result.returncode == 2
    assert f"{manifest} line 2718, field 'size'" in result.stderr
    assert "'12x'" in result.stderr
    assert tenant.job_ids() == []


def test_a_bad_jsonl_line_is_named_with_its_field(tenant: Tenant, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.jsonl"
    rows = [{"source": "https://a.org/x", "destination": tenant.dest("x")}] * 10
    rows[6] = {"source": "https://a.org/x", "destination": tenant.dest("x"),
               "checksum": "adler32:zz"}
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    result = run_cli("submit", "--manifest", str(manifest), env=tenant.env)
    assert result.returncode == 2
    assert "line 7, field 'checksum'" in result.stderr
    assert tenant.job_ids() == []


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


def submit(tenant: Tenant, n: int, size: int = 1000, *extra: str) -> str:
    lines = [json.dumps({"source": f"https://a.org/{i}", "destination": tenant.dest(f"w{i}.bin"),
                         "size": size}) for i in range(n)]
    result = run_cli("submit", "--manifest", "-", *extra, env=tenant.env, stdin="\n".join(lines))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_status_json_is_exactly_the_api_answer(tenant: Tenant) -> None:
    job_id = submit(tenant, 3)
    tenant.lab.worker.finish(job_id, 0, size=1000)
    result = run_cli("status", job_id, "--json", env=tenant.env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown == tenant.api_get(f"/jobs/{job_id}")
    assert shown["state"] == "ACTIVE"
    assert shown["totals"]["files_by_state"]["FINISHED"] == 1


def test_status_for_people_shows_state_and_totals(tenant: Tenant) -> None:
    job_id = submit(tenant, 2, 2 * 1024 * 1024)
    tenant.lab.worker.start(job_id, 0, bytes_done=1024 * 1024, rate_bps=512 * 1024)
    result = run_cli("status", job_id, env=tenant.env)
    assert result.returncode == 0, result.stderr
    assert f"job {job_id}  ACTIVE" in result.stdout
    assert "1 submitted, 1 active" in result.stdout
    assert "1.0 MiB of 4.0 MiB at 512.0 KiB/s" in result.stdout


def test_ls_lists_every_page_and_filters_by_state(tenant: Tenant) -> None:
    client = Client(tenant.url, tenant.token)
    # more jobs than the API's page of 100, so the listing takes two pages
    answers = [client.submit([{"source": f"https://a.org/{i}", "destination": tenant.dest(f"{i}")}])
               for i in range(105)]
    ids = [answer["job_id"] for answer in answers]
    tenant.lab.worker.finish(ids[1], 0, size=1000)
    listed = run_cli("ls", "--json", "--limit", "1000", env=tenant.env)
    assert listed.returncode == 0, listed.stderr
    assert sorted(j["job_id"] for j in json.loads(listed.stdout)["jobs"]) == sorted(ids)
    finished = run_cli("ls", "--state", "FINISHED", env=tenant.env)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split("\t")[0] == ids[1]
    assert finished.stdout.count("\n") == 1


def test_files_pages_through_thousands_and_filters(tenant: Tenant) -> None:
    # with no retries left, the (retryable) mismatch fails the file for good
    job_id = submit(tenant, 2500, 1000, "--max-retries", "0")
    mismatch = ChecksumMismatch("adler32", "0a1b2c3d", "ffff0000")
    tenant.lab.worker.fail(job_id, 1234, mismatch)
    every = run_cli("files", job_id, "--json", env=tenant.env)
    assert every.returncode == 0, every.stderr
    assert [json.loads(ln)["index"] for ln in every.stdout.splitlines()] == list(range(2500))
    failed = run_cli("files", job_id, "--state", "FAILED", env=tenant.env)
    assert failed.returncode == 0, failed.stderr
    assert failed.stdout.startswith("1234\tFAILED\t")
    assert failed.stdout.count("\n") == 1
    assert f"[checksum] {mismatch.reason}" in failed.stdout


def test_cancel_then_retry(tenant: Tenant) -> None:
    job_id = submit(tenant, 4)
    tenant.lab.worker.finish(job_id, 0, size=1000)
    canceled = run_cli("cancel", job_id, env=tenant.env)
    assert canceled.returncode == 0, canceled.stderr
    assert canceled.stdout.strip() == f"job {job_id}: CANCELED"
    assert [f["state"] for f in tenant.files(job_id)] == ["FINISHED"] + ["CANCELED"] * 3
    retried = run_cli("retry", job_id, "--json", env=tenant.env)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"job_id": job_id, "state": "ACTIVE", "retried": 3}
    assert [f["state"] for f in tenant.files(job_id)] == ["FINISHED"] + ["SUBMITTED"] * 3


# -- watch ---------------------------------------------------------------------------------

_CONTROL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")  # CSI and 2-byte escapes


class Terminal(PtyCommand):
    """A command run on a pseudo-terminal, as a person runs it: ``watch`` redraws its
    progress bars there at every poll (into a pipe it only prints the last frame)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        super().__init__(args, env, cols=160, stdin=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)

    def lines(self) -> list[str]:
        """Every line drawn so far, control sequences removed."""
        text = self.raw
        return [ln for ln in re.split(r"[\r\n]+", _CONTROL.sub("", text)) if ln.strip()]

    def wait_for_line(self, *parts: str) -> str:
        """The first line drawn that holds all of ``parts``."""
        def drawn() -> str | None:
            return next((ln for ln in self.lines() if all(p in ln for p in parts)), None)

        try:
            return str(wait_until(drawn, CLI_TIMEOUT_S, f"a line with {parts}"))
        except AssertionError as err:
            raise AssertionError(f"{err}; drawn:\n" + "\n".join(self.lines()[-20:])) from None

    def finish(self) -> tuple[int, str, str]:
        """Wait for the command to exit: (exit code, screen text, stderr)."""
        _, err = self.proc.communicate(timeout=CLI_TIMEOUT_S)
        self.drained(CLI_TIMEOUT_S)
        return self.proc.returncode, "\n".join(self.lines()), err


def test_watch_follows_active_files_and_exits_0_when_finished(tenant: Tenant) -> None:
    job_id = submit(tenant, 3, 4096)
    worker = tenant.lab.worker
    watcher = Terminal([sys.executable, "-m", "transferd", "watch", job_id,
                        "--interval", "0.05"], tenant.env)
    try:
        worker.start(job_id, 0, bytes_done=2048, rate_bps=1024.0)
        # the watch draws a bar for the ACTIVE file, then follows its progress
        watcher.wait_for_line("w0.bin", "2.0 KiB/4.0 KiB", "1.0 KiB/s", "ETA 2s")
        watcher.wait_for_line(f"job {job_id[:8]}… ACTIVE 0/3 files", "2.0 KiB/12.0 KiB")
        worker.progress(job_id, 0, bytes_done=3072, rate_bps=2048.0)
        watcher.wait_for_line("w0.bin", "3.0 KiB/4.0 KiB", "2.0 KiB/s")
        for i in range(3):
            worker.finish(job_id, i, size=4096)
        code, screen, err = watcher.finish()
    finally:
        watcher.close()
    assert code == 0, err
    assert f"job {job_id}  FINISHED" in screen
    assert "3 finished" in screen


def test_watch_exits_3_when_the_job_ends_failed(tenant: Tenant) -> None:
    job_id = submit(tenant, 2)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "transferd", "watch", job_id, "--interval", "0.05"],
        env=tenant.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        tenant.lab.worker.finish(job_id, 0, size=1000)
        tenant.lab.worker.fail(job_id, 1, NotFound("the source answered 404 Not Found"))
        out, err = watcher.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 3, err
    assert f"job {job_id}  FINISHEDDIRTY" in out
    assert "1 finished, 1 failed" in out


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
