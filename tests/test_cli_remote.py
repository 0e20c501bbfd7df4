"""The command line while the page is open: with ``python app.py`` running on a data folder (a real server
process holding the DuckDB file), ``wvstudio`` commands run inside it over loopback HTTP and print what they
print locally; the lock is reported only when no studio answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from browser_util import free_port
from conftest import ROOT

pytestmark = pytest.mark.slow


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def wvstudio(*argv, cwd, timeout=300, **popen) -> subprocess.CompletedProcess:
    """Run ``wvstudio ARGV`` as its own process (``python -m studio.cli``) from ``cwd``."""
    return subprocess.run([sys.executable, "-m", "studio.cli", *argv], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout, **popen)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python app.py`` on a fresh data folder and a free port; yields (data_dir, url, process)."""
    data = tmp_path_factory.mktemp("served") / "data"
    port = free_port()
    log = open(data.parent / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=_env(STUDIO_DATA_DIR=str(data), STUDIO_PORT=str(port)))
    url = f"http://127.0.0.1:{port}"
    control = data / ".studio-server.json"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, (data.parent / "server.log").read_text()
        if control.exists():
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=5).close()
                break
            except OSError:
                pass
        assert time.monotonic() < deadline, "the studio did not start: " + (data.parent / "server.log").read_text()
        time.sleep(0.2)
    yield data, url, proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_control_file_is_private_and_names_this_server(server):
    data, url, proc = server
    path = data / ".studio-server.json"
    assert path.stat().st_mode & 0o077 == 0, "the token file must be readable by its owner only"
    info = json.loads(path.read_text())
    assert info["pid"] == proc.pid and info["url"] == url and len(info["token"]) >= 32


def test_import_while_the_studio_runs_prints_the_same_as_locally(server, data_dir, tmp_path):
    data, url, _ = server
    # run from another folder with a relative path: the file is found although the server's folder differs
    (tmp_path / "in").mkdir()
    seeds = tmp_path / "in" / "testset.jsonl"
    seeds.write_bytes((data_dir / "wizardlm_testset.jsonl").read_bytes())
    remote = wvstudio("import", "in/testset.jsonl", "--data-dir", str(data), cwd=tmp_path)
    assert remote.returncode == 0, remote.stderr
    local = wvstudio("import", "in/testset.jsonl", "--data-dir", str(tmp_path / "local"), cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    assert remote.stdout == local.stdout
    assert "218 seeds" in remote.stdout

    listed = wvstudio("sources", "--data-dir", str(data), cwd=tmp_path)
    assert listed.returncode == 0 and "testset.jsonl" in listed.stdout

    again = wvstudio("import", str(seeds), "--data-dir", str(data), cwd=tmp_path)
    assert again.returncode == 0 and "already imported" in again.stdout


def test_errors_come_back_with_the_same_exit_code(server, tmp_path):
    data, _, _ = server
    bad = wvstudio("show", "999999", "--data-dir", str(data), cwd=tmp_path)
    local = wvstudio("show", "999999", "--data-dir", str(tmp_path / "local"), cwd=tmp_path)
    assert bad.returncode == local.returncode == 2
    assert bad.stderr == local.stderr and bad.stderr.startswith("error: ")


def _post(url: str, body: dict, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + "/studio/cli", data=json.dumps(body).encode(), headers=headers,
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_route_needs_the_token(server):
    data, url, _ = server
    body = {"id": "x", "payload": {"__command__": "cmd_sources", "cmd": "sources"}}
    assert _post(url, body, None) == 401
    assert _post(url, body, "not-the-token") == 401
    token = json.loads((data / ".studio-server.json").read_text())["token"]
    assert _post(url, body, token) == 200
    # a command that would start another server is refused inside the studio
    serve = {"id": "y", "payload": {"__command__": "cmd_serve", "cmd": "serve", "host": None, "port": None}}
    req = urllib.request.Request(url + "/studio/cli", data=json.dumps(serve).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    lines = [json.loads(x) for x in urllib.request.urlopen(req, timeout=30).read().splitlines()]
    assert lines[-1] == {"rc": 2} and "cannot be run inside the studio" in lines[0]["text"]


def test_ctrl_c_stops_a_job_running_inside_the_studio(server, tmp_path, data_dir):
    data, _, _ = server
    wvstudio("import", str(data_dir / "wizardlm_testset.jsonl"), "--data-dir", str(data), cwd=tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "expand", "--all", "--n", "2", "--rounds", "3",
                             "--max-new-tokens", "128", "--data-dir", str(data)], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the progress bar ("job N") is the studio's answer that the job exists
    seen = ""
    while "job " not in seen:
        ch = proc.stderr.read(1)
        assert ch, f"expand ended early: {proc.wait()} {seen}"
        seen += ch
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    jobs = wvstudio("jobs", "--data-dir", str(data), cwd=tmp_path)
    assert jobs.returncode == 0
    row = next(line for line in jobs.stdout.splitlines() if " expand " in f" {line} ")
    assert "stopping" in row or "stopped" in row, jobs.stdout  # Ctrl-C reached the job inside the studio


def test_lock_is_reported_when_no_studio_answers(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
                               "print('ready', flush=True); sys.stdin.read()", str(data / "studio.duckdb")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        r = wvstudio("sources", "--data-dir", str(data), cwd=tmp_path)
        assert r.returncode == 2 and "is the web app or another wvstudio command using" in r.stderr
        # a control file left by a studio that died: the lock is still what is reported
        (data / ".studio-server.json").write_text(json.dumps({"pid": 2**22 + 12345, "url": "http://127.0.0.1:9",
                                                              "token": "x" * 40}))
        r = wvstudio("sources", "--data-dir", str(data), cwd=tmp_path)
        assert r.returncode == 2 and "is the web app or another wvstudio command using" in r.stderr
        # one whose process lives but does not answer (this test's own pid): lock plus the reason
        (data / ".studio-server.json").write_text(json.dumps({"pid": os.getpid(), "url": f"http://127.0.0.1:{free_port()}",
                                                              "token": "x" * 40}))
        r = wvstudio("sources", "--data-dir", str(data), cwd=tmp_path)
        assert r.returncode == 2 and "no studio answers" in r.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
