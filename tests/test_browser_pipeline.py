"""Issue 13 item 10 in headless Chromium: the Expand tab's bar moves on steps (seed x round) while round 2 of a
seed is still in flight, "N not expanded yet" follows the job without a reload, and the Evol-Instruct panel shows
an eliminated evolution's rejected text on a red status line. The teacher is the loopback OpenAI-compatible server
of ``tests/test_endpoints.py``; each test waits on what the page or the server shows, never on time."""

from __future__ import annotations

import pytest

from browser_util import chromium, new_page, serve
from browser_util import wait_text as _wait_text
from test_endpoints import Teacher, _seeds

from studio.evol import EvolConfig
from studio.expand import ExpandConfig

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def teacher():
    t = Teacher()
    yield t
    t.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, teacher):
    """The studio on a free loopback port, with the loopback teacher as endpoint ``ep`` and 3 seeds."""
    from studio.config import Settings
    from studio.server import create_server

    tmp = tmp_path_factory.mktemp("pipeline")
    app, studio = create_server(Settings(data_dir=tmp / "data"))
    studio.registry.add_endpoint("ep", teacher.url, "m", concurrency=1)
    src = _seeds(studio, tmp, 3)
    with serve(app) as url:
        yield url, studio, src
    studio.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    pg = new_page(browser, 60_000)
    yield pg
    pg.close()


def test_the_bar_moves_on_steps_and_the_seed_count_follows_the_job(server, teacher, page):
    url, studio, src = server
    teacher.arrivals.clear()
    teacher.gate.clear()
    teacher.plan = ["ok", "gate"]  # round 1 answered; round 2's follow-up question held
    job = studio.expand(ExpandConfig(teacher="ep", rounds=2, batch_size=1, source_id=src), n=1)
    page.goto(url)
    page.get_by_role("tab", name="Expand").click()
    _wait_text(page, "#expand-seeds-info", r"3 seeds in this source, 3 not expanded yet")
    page.locator("#expand-job input[type=number]").fill(str(job))
    page.locator("#expand-job input[type=number]").press("Tab")
    line = _wait_text(page, "#expand-progress", rf"job {job} running: 0/1 done, step 1/2")
    assert page.get_attribute("#expand-progress progress", "value") == "50.0", line  # no seed done, the bar moved
    teacher.gate.set()
    _wait_text(page, "#expand-progress", rf"job {job} done: 1/1 done")
    _wait_text(page, "#expand-seeds-info", r"3 seeds in this source, 2 not expanded yet")  # no reload


def test_an_eliminated_evolution_shows_its_rejected_text_on_a_red_line(server, teacher, page):
    url, studio, src = server
    teacher.plan = []
    job = studio.evolve(EvolConfig(evolver="ep", batch_size=1), n=1, source_id=src)
    assert studio.jobs.wait(job, timeout=60).status == "done"
    page.goto(url)
    page.get_by_role("tab", name="Expand").click()
    page.get_by_text("Evol-Instruct: evolve seeds before expanding them").click()
    page.locator("#evol-job input[type=number]").fill(str(job))
    page.locator("#evol-job input[type=number]").press("Tab")
    _wait_text(page, "#evol-progress", rf"job {job} failed on every seed: 1 of 1 failed")
    assert page.locator("#evol-progress .wv-error").count() == 1
    color = page.eval_on_selector("#evol-progress .wv-line", "e => getComputedStyle(e).color")
    assert color == "rgb(185, 28, 28)", color
    table = _wait_text(page, "#evol-dropped", r"Answer \d+\.")
    assert "too short" in table and "rejected text" in table, table
