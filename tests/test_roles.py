"""The role matrix of the page: every event handler of the real page (``ui.app.build_app``) declares a role
(``ui.common.guarded``), and the server refuses it exactly when the caller's role is too low, writing nothing.

Callers (``studio.access.caller`` reads ``gr.Request.username`` after a password login, and the peer address):

* ``anonymous``: nobody signed in, from another machine, while a login is configured -> viewer;
* ``carol`` (viewer), ``bob`` (editor), ``alice`` (admin): users-file users (``STUDIO_USERS_FILE``) signed in;
* in read-only (demo) mode ``alice`` is a viewer too.

Handlers are called through Gradio's own ``Blocks.call_function`` (the path a queued event takes: inputs given as
a set become one dict, the ``gr.Request`` is injected by its annotation), so a guard Gradio would not feed the
request to fails here. Where the guard lets a call through, the matrix calls a stand-in for the handler body
(``__wv_fn__``), so that no expansion or training actually starts; the scenarios further down run real bodies
(delete, bulk tag and delete, import, adding an endpoint, stopping a training job) and check the store.

The command line's route while the page runs (``studio.remote``, ``POST /studio/cli``) is not a page handler: it
answers only loopback clients holding the per-start token of the control file (mode 0600 in the data folder),
i.e. the data folder's owner, who can run any command on that folder anyway; it is admin-equivalent, and
read-only mode does not apply to it (``test_cli_route_is_the_local_owners_only``).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import typing

import gradio as gr
import pytest
from starlette.requests import Request as StarletteRequest

from studio import access
from studio.access import AccessDenied
from studio.config import ROLES, Settings
from studio.core import Studio
from studio.filters import ConvFilter

CALLERS = {"anonymous": "viewer", "carol": "viewer", "bob": "editor", "alice": "admin"}
"""Callers of the matrix and the role each has (outside read-only mode)."""

CONVERSATIONS = [
    [{"from": "human", "value": f"Question {i} about foxes"}, {"from": "gpt", "value": f"Answer {i}: they are quick."}]
    for i in range(4)
]


def request_for(name: str) -> gr.Request:
    """A ``gr.Request`` as Gradio builds it for a queued event: over a Starlette request from another machine
    (203.0.113.7), with ``username`` set after a password login (None: nobody signed in)."""
    scope = {"type": "http", "method": "POST", "path": "/gradio_api/queue/join", "headers": [],
             "query_string": b"", "client": ("203.0.113.7", 50123), "server": ("127.0.0.1", 7860)}
    return gr.Request(request=StarletteRequest(scope), username=None if name == "anonymous" else name,
                      session_hash=f"session-{name}")


def open_studio(root, read_only: bool) -> Studio:
    users = root / "users.json"
    if not users.exists():
        for name, role in CALLERS.items():
            if name != "anonymous":
                access.add_user(users, name, role, f"{name}-password-1")
    settings = Settings(data_dir=root / "data", host="127.0.0.1", auth="", read_only=read_only, users_file=users,
                        oauth=False, oauth_role="viewer", api_keys_file=None, endpoint_key_envs=())
    studio = Studio(settings)
    if not read_only:
        f = root / "foxes.json"
        f.write_text(json.dumps([{"id": str(i), "conversations": c} for i, c in enumerate(CONVERSATIONS)]))
        studio.import_upload(f, "foxes.json")
    return studio


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """``(studio, demo)``: the real page on a studio with four imported conversations and a users file."""
    from studio.ui.app import build_app

    studio = open_studio(tmp_path_factory.mktemp("roles"), read_only=False)
    demo = build_app(studio)
    yield studio, demo
    studio.close()


@pytest.fixture(scope="module")
def read_only_page(tmp_path_factory):
    from studio.ui.app import build_app

    studio = open_studio(tmp_path_factory.mktemp("roles-ro"), read_only=True)
    demo = build_app(studio)
    yield studio, demo
    studio.close()


def handlers(demo) -> list:
    """Every registered event handler with a Python function (``js``-only events and ``cancels`` have none)."""
    return [bf for bf in demo.fns.values() if bf.fn is not None]


def default_inputs(bf, overrides: dict | None = None) -> list:
    """Values for ``bf``'s inputs in order: each component's own value (a copy, as a session gets), or
    ``overrides[elem_id]``; a ``gr.State`` may be overridden by its value's type name."""
    overrides = overrides or {}
    out = []
    for c in bf.inputs:
        value = copy.deepcopy(getattr(c, "value", None))
        key = c.elem_id if c.elem_id in overrides else type(value).__name__
        out.append(overrides[key] if key in overrides else value)
    return out


def event_data_for(fn):
    hints = typing.get_type_hints(fn)
    if any(isinstance(h, type) and issubclass(h, gr.EventData) for h in hints.values()):
        return gr.EventData(None, {"index": [0, 0], "value": "1", "row_value": ["1"], "selected": True})
    return None


def call(demo, bf, name: str, inputs: list):
    """Run ``bf`` as caller ``name`` through ``Blocks.call_function``; returns its prediction."""
    out = asyncio.run(demo.call_function(bf, list(inputs), requests=request_for(name),  # Gradio inserts into it
                                         event_data=event_data_for(bf.fn)))
    return out["prediction"]


def refusal(demo, bf, name: str, inputs: list) -> AccessDenied | None:
    """The ``AccessDenied`` behind the toast when ``name`` is refused, else None (the call went through or
    failed for another reason, which is then re-raised)."""
    try:
        call(demo, bf, name, inputs)
    except gr.Error as e:
        if isinstance(e.__cause__, AccessDenied):
            return e.__cause__
        raise
    return None


def snapshot(studio) -> dict:
    """What a handler could write: every conversation (deleted too: id, version, status, flag, tags, tokens),
    sources, bulk operations, jobs, registry entries, and the files in the export and model folders."""
    store = studio.store
    convs = {}
    for status in (None, "deleted"):
        df, _ = store.list_conversations(ConvFilter(status=status), limit=10_000)
        for r in df.to_dict("records"):
            convs[r["id"]] = (r["version"], r["status"], r["flag"], r["tags"], r["tokens"])
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []  # noqa: E731
    return {"conversations": convs, "sources": store.list_sources().to_dict("records"),
            "bulk": store.list_bulk_ops(1000).to_dict("records"), "jobs": store.list_jobs(limit=1000).to_dict("records"),
            "models": studio.registry.names(), "exports": files(studio.settings.export_dir),
            "model_files": files(studio.settings.model_dir)}


def find(demo, action: str, nth: int = 0):
    found = [bf for bf in handlers(demo) if getattr(bf.fn, "__wv_action__", None) == action]
    assert len(found) > nth, f"no handler '{action}' #{nth}"
    return found[nth]


def component(demo, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


# ---------------------------------------------------------------------------------------------- the matrix


def test_every_handler_declares_a_role(page):
    studio, demo = page
    fns = handlers(demo)
    assert len(fns) > 60
    undeclared = [bf.fn.__qualname__ for bf in fns if getattr(bf.fn, "__wv_role__", None) not in ROLES]
    assert not undeclared, f"handlers without a declared role (wrap them in ui.common.guarded): {undeclared}"
    roles = {bf.fn.__wv_action__: bf.fn.__wv_role__ for bf in fns}
    # the roles of the issue, as the page declares them
    for action in ("Importing a file", "Saving a conversation", "Bulk actions", "Running an expansion",
                   "Running an evolution", "Restoring a version"):
        assert roles[action] == "editor", action
    for action in ("Training", "Export", "Deleting a conversation", "Counting tokens", "Adding an endpoint",
                   "Adding a checkpoint", "Checking a model", "Removing a model", "Merging an adapter"):
        assert roles[action] == "admin", action
    for action in ("Browsing conversations", "Opening a conversation", "Chat", "Following a run"):
        assert roles[action] == "viewer", action


def test_a_handler_without_a_guard_is_caught(page):
    """The check above is not vacuous: a page with one plain handler fails it."""
    from studio.ui.app import build_app

    studio, _ = page
    demo = build_app(studio)
    with demo:
        gr.Button("extra").click(lambda: None, None, None)
    assert [bf for bf in handlers(demo) if not hasattr(bf.fn, "__wv_role__")]


def test_role_matrix(page, monkeypatch):
    """Each handler, each caller: refused (``AccessDenied`` naming the role needed) exactly when the caller's
    role is below the declared one, nothing written; let through otherwise."""
    studio, demo = page
    reached = []
    for bf in handlers(demo):
        fn, role = bf.fn, bf.fn.__wv_role__
        for name, caller_role in CALLERS.items():
            inputs = default_inputs(bf)
            if access.allows(caller_role, role):
                marker = object()
                stand_in = ((lambda *a, **k: iter([marker])) if inspect.isgeneratorfunction(fn)
                            else (lambda *a, **k: marker))
                monkeypatch.setattr(fn, "__wv_fn__", stand_in)
                assert call(demo, bf, name, inputs) is marker, (fn.__wv_action__, name)
                monkeypatch.undo()
                reached.append((role, name))
            else:
                before = snapshot(studio)
                denied = refusal(demo, bf, name, inputs)
                assert denied is not None, f"{fn.__wv_action__} ({role}) went through for {name} ({caller_role})"
                assert f"needs the {role} role" in str(denied)
                assert snapshot(studio) == before, fn.__wv_action__
    assert {("admin", "alice"), ("editor", "bob"), ("viewer", "anonymous")} <= set(reached)


def test_read_only_mode_makes_the_admin_a_viewer(read_only_page, monkeypatch):
    studio, demo = read_only_page
    refused = 0
    for bf in handlers(demo):
        role = bf.fn.__wv_role__
        if role == "viewer":
            monkeypatch.setattr(bf.fn, "__wv_fn__", (lambda *a, **k: iter([1])) if inspect.isgeneratorfunction(bf.fn)
                                else (lambda *a, **k: 1))
            assert call(demo, bf, "alice", default_inputs(bf)) == 1
            monkeypatch.undo()
            continue
        before = snapshot(studio)
        denied = refusal(demo, bf, "alice", default_inputs(bf))
        assert denied is not None and "read-only (demo mode)" in str(denied), bf.fn.__wv_action__
        assert snapshot(studio) == before
        refused += 1
    assert refused >= 25  # export, push, token counts, model checks, job stop/resume, every edit ...


# ---------------------------------------------------------------------------------------------- real bodies


def test_deleting_a_conversation_needs_an_admin(page):
    from studio.ui.data import DataTabState

    studio, demo = page
    cid = int(studio.store.conversation_ids(ConvFilter())[0])
    bf = find(demo, "Deleting a conversation")
    inputs = lambda: default_inputs(bf, {"DataTabState": DataTabState(conv_id=cid, conv_version=1)})  # noqa: E731
    before = snapshot(studio)
    for name in ("anonymous", "carol", "bob"):
        denied = refusal(demo, bf, name, inputs())
        assert "Deleting a conversation needs the admin role" in str(denied)
    assert snapshot(studio) == before and studio.store.get_conversation(cid)["deleted_at"] is None
    call(demo, bf, "alice", inputs())
    assert studio.store.get_conversation(cid)["deleted_at"] is not None
    studio.store.restore_conversations([cid])


def test_bulk_tag_is_an_editors_and_bulk_delete_an_admins(page):
    from studio.ui.data import DataTabState

    studio, demo = page
    bf = find(demo, "Bulk actions")
    ids = studio.store.conversation_ids(ConvFilter())

    def inputs(action, arg=""):
        return default_inputs(bf, {"bulk-action": action, "bulk-arg": arg, "bulk-scope": "Current filter",
                                   "DataTabState": DataTabState()})

    before = snapshot(studio)
    assert "Bulk actions needs the editor role" in str(refusal(demo, bf, "carol", inputs("tag", "reviewed")))
    assert snapshot(studio) == before
    call(demo, bf, "bob", inputs("tag", "reviewed"))
    assert studio.store.count_conversations(ConvFilter(tags=["reviewed"])) == len(ids)

    before = snapshot(studio)
    assert "Bulk delete needs the admin role; you are signed in as editor (bob)" in str(
        refusal(demo, bf, "bob", inputs("delete")))
    assert snapshot(studio) == before
    # a bulk delete asks first (the count, then Confirm): Apply alone deletes nothing
    st = DataTabState()
    call(demo, bf, "alice", default_inputs(bf, {"bulk-action": "delete", "bulk-arg": "",
                                                "bulk-scope": "Current filter", "DataTabState": st}))
    assert snapshot(studio) == before and st.pending_bulk["ids"] == ids
    confirm = find(demo, "Confirming a bulk action")
    st_bob = DataTabState(pending_bulk=dict(st.pending_bulk))
    assert "Bulk delete needs the admin role; you are signed in as editor (bob)" in str(
        refusal(demo, confirm, "bob", default_inputs(confirm, {"DataTabState": st_bob})))
    assert snapshot(studio) == before
    call(demo, confirm, "alice", default_inputs(confirm, {"DataTabState": st}))
    assert studio.store.count_conversations(ConvFilter()) == 0
    assert studio.store.restore_conversations(ids) == len(ids)
    studio.store.bulk("untag", ids, "reviewed")


def test_importing_needs_an_editor(page, tmp_path):
    studio, demo = page
    bf = find(demo, "Importing a file")
    f = tmp_path / "more.json"
    f.write_text(json.dumps([{"id": "y", "conversations": [{"from": "human", "value": "Why is the sky blue?"},
                                                           {"from": "gpt", "value": "Rayleigh scattering."}]}]))
    sources = len(studio.store.list_sources())
    before = snapshot(studio)
    denied = refusal(demo, bf, "carol", default_inputs(bf, {"data-upload": [str(f)]}))
    assert "Importing a file needs the editor role; you are signed in as viewer (carol)" in str(denied)
    denied = refusal(demo, bf, "anonymous", default_inputs(bf, {"data-upload": [str(f)]}))
    assert "Importing a file needs the editor role; sign in" in str(denied)
    assert snapshot(studio) == before
    call(demo, bf, "bob", default_inputs(bf, {"data-upload": [str(f)]}))
    assert len(studio.store.list_sources()) == sources + 1


def test_adding_an_endpoint_needs_an_admin(page):
    studio, demo = page
    bf = find(demo, "Adding an endpoint")
    values = {"models-ep-name": "teacher-x", "models-ep-url": "http://127.0.0.1:9/v1", "models-ep-model": "m",
              "models-ep-env": ""}
    before = snapshot(studio)
    assert "needs the admin role; you are signed in as editor (bob)" in str(
        refusal(demo, bf, "bob", default_inputs(bf, values)))
    assert snapshot(studio) == before and "teacher-x" not in studio.registry.names()
    call(demo, bf, "alice", default_inputs(bf, values))
    assert "teacher-x" in studio.registry.names()
    studio.registry.remove("teacher-x")


def test_stopping_a_training_run_needs_an_admin_in_every_tab(page):
    """The job list shows every kind; the role follows the job picked: from the Expand tab's panel an editor may
    stop an expansion, not a training run."""
    studio, demo = page
    jid = studio.store.create_job("train", {"run_id": "r-test"}, [])
    for nth in range(3):  # the Expand, Evol-Instruct and Train panels
        bf = find(demo, "Stopping a job", nth)
        inputs = [jid] + default_inputs(bf)[1:]
        denied = refusal(demo, bf, "bob", inputs)
        assert "Stopping a training run needs the admin role" in str(denied)
        assert studio.store.get_job(jid)["status"] == "queued"
        with pytest.raises(gr.Error, match="not run by this studio"):  # admin passes the guard; no worker here
            call(demo, bf, "alice", inputs)
    studio.store.set_job_status(jid, "failed", "test job")


# ---------------------------------------------------------------------------------------------- routes


def test_v1_chat_is_refused_in_read_only_mode(tmp_path):
    from fastapi.testclient import TestClient

    from studio.api import make_app

    keys = tmp_path / "keys.json"
    key = access.add_api_key(keys, "laptop")
    s = Settings(data_dir=tmp_path / "data", host="127.0.0.1", auth="", read_only=True, users_file=None,
                 oauth=False, api_keys_file=keys, api_enabled=True, endpoint_key_envs=())
    studio = Studio(s)
    try:
        client = TestClient(make_app(studio))
        auth = {"Authorization": f"Bearer {key}"}
        body = {"model": studio.registry.names()[0], "messages": [{"role": "user", "content": "hi"}]}
        r = client.post("/v1/chat/completions", json=body, headers=auth)  # even with a valid key
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "read_only" and "read-only" in r.json()["error"]["message"]
        assert client.get("/v1/models", headers=auth).status_code == 200
        assert client.post("/v1/chat/completions", json=body).status_code == 401  # no key: 401 first
    finally:
        studio.close()


def test_cli_route_is_the_local_owners_only(tmp_path):
    """``POST /studio/cli`` runs any command (admin-equivalent): only for a loopback client with the token."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from studio import remote

    ran = []
    app = FastAPI()
    app.include_router(remote.make_router("secret-token", lambda payload, interrupt: ran.append(payload) or 0))
    body = {"id": "1", "payload": {"command": "delete", "ids": "1"}}
    local = TestClient(app, client=("127.0.0.1", 40000))
    assert local.post(remote.ROUTE, json=body).status_code == 401
    assert local.post(remote.ROUTE, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    far = TestClient(app, client=("203.0.113.7", 40000))
    assert far.post(remote.ROUTE, json=body, headers={"Authorization": "Bearer secret-token"}).status_code == 403
    assert ran == []
    r = local.post(remote.ROUTE, json=body, headers={"Authorization": "Bearer secret-token"})
    assert r.status_code == 200 and ran == [body["payload"]]
