"""A visitor's export is a name inside ``<data>/exports``, never a server path (issue 8, hole 5), and the server
removes its control file when it is stopped by a signal.

The Train tab's Export takes a *name* (``RunManager.export_named`` / ``export_folder``, checked with
``studio.paths.safe_child``): every bad name (a path, ``..``, a separator, empty, a link in the exports folder
leading out) gets the one ``EXPORT_NAME_REFUSED`` text, which is the same whether or not the outside target exists,
and nothing is written anywhere; a good name writes ``<data>/exports/<name>``; a taken name is refused by name.

The page's handler is called as Gradio calls it (found by element id, ``test_train_tab.Page``), without a browser.
The test's working folder is an empty temporary one, so code that resolved a name against the working folder (as
the page did before) would write there, and the tests look there too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import gradio as gr
import pytest

from studio.filters import ConvFilter
from studio.runs import RunError

from test_train_runs import FAST, add_conversations
from test_train_tab import LOCAL, Page, quiet  # noqa: F401  (quiet: the fixture)

ROOT = Path(__file__).resolve().parents[1]


def tree(folder: Path) -> list[str]:
    """Every path under ``folder`` (links not followed), relative, sorted; [] when it does not exist."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def place(quiet, tmp_path, monkeypatch):  # noqa: F811
    """A studio with a run whose model is registered (the tiny checkpoint, copied on export), a working folder
    that is empty, and outside the exports folder: a non-empty folder, a missing one, and links in the exports
    folder to each."""
    add_conversations(quiet, 4)
    run_id = quiet.runs.create_run("tiny", "lora", ConvFilter(), FAST)
    quiet.runs.folder(run_id).update_meta(registered_as="tiny")  # as a finished run registers its checkpoint
    exports = quiet.settings.export_dir
    exports.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not yours")
    missing = tmp_path / "missing"
    (exports / "link-out").symlink_to(outside, target_is_directory=True)
    (exports / "link-missing").symlink_to(missing, target_is_directory=True)
    cwd = tmp_path / "cwd" / "here"  # so that '../../x' from it is tmp_path / "x" too
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    return {"studio": quiet, "run": run_id, "exports": exports, "outside": outside, "missing": missing, "cwd": cwd,
            "tmp": tmp_path}


def bad_names(p: dict) -> dict:
    """Label -> a name the page must refuse. Pairs that differ only in whether the outside target exists:
    ``outside-abs``/``missing-abs``, ``outside-rel``/``missing-rel``, ``link-out``/``link-missing``."""
    return {"dotdot": "..", "etc": "/etc", "up-up-x": "../../x", "separator": "a/b", "empty": "", "blank": "   ",
            "hidden": ".hidden", "outside-abs": str(p["outside"]), "missing-abs": str(p["missing"]),
            "outside-rel": "../../outside", "missing-rel": "../../missing", "data-folder": "../runs",
            "link-out": "link-out", "link-missing": "link-missing"}


def untouched(p: dict, exports_before: list[str]) -> None:
    assert tree(p["outside"]) == ["keep.txt"]
    assert not p["missing"].exists() and not (p["tmp"] / "x").exists()
    assert tree(p["tmp"] / "cwd") == ["here"]
    assert tree(p["exports"]) == exports_before


def test_every_bad_export_name_gets_one_refusal_from_the_manager(place):
    from studio.train import EXPORT_NAME_REFUSED

    runs, before = place["studio"].runs, tree(place["exports"])
    texts = {}
    for label, name in {**bad_names(place), "none": None}.items():
        with pytest.raises(RunError) as e:
            runs.export_named("tiny", name)
        texts[label] = str(e.value)
    assert set(texts.values()) == {EXPORT_NAME_REFUSED}, texts
    assert str(place["tmp"]) not in EXPORT_NAME_REFUSED and "exists" not in EXPORT_NAME_REFUSED
    untouched(place, before)


def export_click(page: Page, run_id: str, name, repo: str = "") -> dict:
    """The Train tab's Export button, as the page calls it (inputs: run picker, export name, Hub repo)."""
    bf = page.handler("train-export", "click")
    assert [c.elem_id for c in bf.inputs] == ["train-run", "train-export-dir", "train-push-repo"]
    out = bf.fn(LOCAL, run_id, name, repo)
    assert isinstance(out, dict) and set(out) <= set(bf.outputs), out
    return out


def test_the_train_tabs_export_refuses_paths_with_one_text(place):
    page, before = Page(place["studio"]), tree(place["exports"])
    texts = {}
    for label, name in bad_names(place).items():
        with pytest.raises(gr.Error) as e:
            export_click(page, place["run"], name)
        texts[label] = e.value.message
    assert len(set(texts.values())) == 1, texts
    text = texts["etc"]
    assert text.startswith("export name refused: give a folder name"), text
    assert "exists" not in text and "not a directory" not in text.lower() and str(place["tmp"]) not in text
    untouched(place, before)


def test_the_train_tabs_export_writes_a_good_name_under_exports(place):
    page, exports = Page(place["studio"]), place["exports"]
    out = export_click(page, place["run"], "  tiny-export  ")  # spaces around the name are dropped
    shown = out[page["train-export-out"]]
    assert "exports/tiny-export" in shown and str(place["tmp"]) not in shown, shown
    written = exports / "tiny-export"
    assert (written / "config.json").is_file() and (written / "model.safetensors").is_file()
    assert json.loads((written / "wvstudio_lineage.json").read_text())["name"] == "tiny"
    assert tree(place["cwd"]) == [] and tree(place["outside"]) == ["keep.txt"]

    # the same name again: refused by name only (it is inside our own folder), nothing overwritten
    stamp = (written / "config.json").stat().st_mtime_ns
    with pytest.raises(gr.Error, match=r"an export named 'tiny-export' exists already in the exports folder"):
        export_click(page, place["run"], "tiny-export")
    assert (written / "config.json").stat().st_mtime_ns == stamp
    (exports / "a-file").write_text("x")
    with pytest.raises(gr.Error, match=r"an export named 'a-file' exists already"):
        export_click(page, place["run"], "a-file")
    # an empty folder of that name is written into
    (exports / "empty").mkdir()
    export_click(page, place["run"], "empty")
    assert (exports / "empty" / "config.json").is_file()


# ---------------------------------------------------------------------------------------------- control file


def test_remove_own_control_leaves_another_process_file(tmp_path):
    from studio import remote

    remote.write_control(tmp_path, "http://127.0.0.1:1")
    path = remote.control_path(tmp_path)
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "pid": os.getpid() + 1}))  # another studio took the folder over
    assert remote.remove_own_control(tmp_path) is False and path.exists()
    path.write_text(json.dumps(info))
    assert remote.remove_own_control(tmp_path) is True and not path.exists()
    assert remote.remove_own_control(tmp_path) is False  # gone already: no error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/", timeout=5).close()  # noqa: S310 - our own loopback server
    except urllib.error.HTTPError:
        return True  # any HTTP answer: the server is up
    except (urllib.error.URLError, OSError):
        return False
    return True


def test_sigterm_removes_the_servers_control_file(tmp_path):
    """``python app.py`` on a free port: once the page answers, SIGTERM ends it (by that signal) and the control
    file is gone."""
    data = tmp_path / "data"
    log = tmp_path / "server.log"
    env = {**os.environ, "STUDIO_DATA_DIR": str(data), "STUDIO_HOST": "127.0.0.1", "STUDIO_PORT": str(_free_port()),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    control = data / ".studio-server.json"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        info = None
        while time.monotonic() < deadline and proc.poll() is None:
            if info is None and control.exists():
                try:
                    info = json.loads(control.read_text())
                except ValueError:  # written atomically, but be lenient
                    info = None
            if info is not None and _answers(info["url"]):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the server did not come up (exit {proc.poll()}): {log.read_text()[-3000:]}")
        assert info["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        assert not control.exists(), f"control file left behind; log: {log.read_text()[-3000:]}"
        assert rc == -signal.SIGTERM, (rc, log.read_text()[-3000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_exports_are_not_served_by_url(settings):
    """The exports folder is not a Gradio ``allowed_paths`` entry: a file there cannot be fetched by its path,
    whoever asks (only the caller of an export gets a copy, under Gradio's cache's unguessable name)."""
    import httpx

    from studio.server import create_server

    from browser_util import serve

    app, studio = create_server(settings)
    try:
        settings.export_dir.mkdir(parents=True, exist_ok=True)
        secret = settings.export_dir / "arena-battles-20261129-120000.jsonl"
        secret.write_text('{"model_a": "x"}\n')
        with serve(app) as url:
            for route in ("/gradio_api/file=", "/file="):
                r = httpx.get(f"{url}{route}{secret}")
                assert r.status_code in (403, 404), (route, r.status_code)
                assert "model_a" not in r.text
    finally:
        studio.close()
