"""studio/access.py and studio/paths.py: roles and the guard's messages, password login from a users file
(hashed, salted, wrong passwords refused), who the caller is from a real Gradio request (password login on a
real Gradio server, Hugging Face OAuth through the session Gradio reads), demo mode, anonymous callers on and
off loopback, API keys (hashed at rest, verified), the command line, and safe names for paths."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
from starlette.requests import Request as StarletteRequest

from studio import access
from studio.access import AccessDenied, Caller, ConfigError, caller, current_user, require, role_of
from studio.config import ROLES, Settings
from studio.paths import check_name, safe_child

ROOT = Path(__file__).resolve().parents[1]


def settings_for(tmp_path, **kw) -> Settings:
    """Settings on a temporary data folder, with every access setting given (none read from the shell)."""
    base = dict(data_dir=tmp_path / "data", host="127.0.0.1", auth="", read_only=False, users_file=None,
                oauth=False, oauth_role="viewer", api_keys_file=None, api_enabled=True, endpoint_key_envs=())
    base.update(kw)
    return Settings(**base)


def password_request(username: str | None) -> gr.Request:
    """A ``gr.Request`` as Gradio builds it after a password login (``username`` set)."""
    return gr.Request(username=username, session_hash="s1")


def oauth_request(hf_username: str, expires_at: float | None = None) -> gr.Request:
    """A ``gr.Request`` over a Starlette request whose session holds a Hugging Face OAuth sign-in, in the
    shape Gradio's OAuth callback stores (``session["oauth_info"]["userinfo"]["preferred_username"]``)."""
    info = {"access_token": "t", "userinfo": {"preferred_username": hf_username, "name": "X", "profile": "",
                                              "picture": ""}}
    if expires_at is not None:
        info["expires_at"] = expires_at
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b"",
             "session": {"oauth_info": info}}
    req = gr.Request(request=StarletteRequest(scope), username=None, session_hash="s2")
    assert gr.OAuthProfile(info["userinfo"]).username == hf_username  # what Gradio would inject
    return req


@pytest.fixture
def users_file(tmp_path) -> Path:
    path = tmp_path / "users.json"
    access.add_user(path, "alice", "admin", "alice-secret-1")
    access.add_user(path, "bob", "editor", "bob-secret-2")
    access.add_user(path, "carol", "viewer", "carol-secret-3")
    access.add_user(path, "hf-dana", "editor", None)  # a Hugging Face account given a role, no password
    return path


# ---------------------------------------------------------------------------------------------- roles


def test_roles_are_ordered():
    assert ROLES == ("viewer", "editor", "admin")
    assert [access.rank(r) for r in ROLES] == [0, 1, 2]
    assert access.allows("admin", "editor") and access.allows("editor", "editor")
    assert not access.allows("viewer", "editor") and not access.allows("editor", "admin")
    with pytest.raises(ValueError, match="unknown role 'owner'"):
        access.allows("owner", "viewer")


def test_require_messages_name_the_role_needed_and_the_caller():
    admin = Caller("alice", "admin", "password")
    assert require(admin, "admin", "Export") is admin
    assert require(Caller("bob", "editor", "password"), "viewer", "Chat").name == "bob"
    with pytest.raises(AccessDenied) as e:
        require(Caller("carol", "viewer", "password"), "admin", "Export")
    assert str(e.value) == "Export needs the admin role; you are signed in as viewer (carol)"
    with pytest.raises(AccessDenied) as e:
        require(Caller(None, "viewer", "anonymous"), "editor", "Running an expansion")
    assert str(e.value) == "Running an expansion needs the editor role; sign in"
    with pytest.raises(AccessDenied, match="no sign-in.*STUDIO_USERS_FILE"):
        require(Caller(None, "viewer", "public"), "editor", "editing a conversation")
    with pytest.raises(AccessDenied, match="^Training needs the admin role; this studio is read-only"):
        require(Caller("alice", "viewer", "password", read_only=True), "admin", "Training")
    assert issubclass(AccessDenied, PermissionError)


# ---------------------------------------------------------------------------------------------- passwords


def test_users_file_stores_salted_hashes_only(users_file):
    text = users_file.read_text()
    for secret in ("alice-secret-1", "bob-secret-2", "carol-secret-3"):
        assert secret not in text
    users = json.loads(text)["users"]
    assert users["bob"]["role"] == "editor" and users["bob"]["password"].startswith("scrypt$16384$8$1$")
    assert "password" not in users["hf-dana"]
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    # same password twice: different salts, different hashes, both verify
    h1, h2 = access.hash_password("same"), access.hash_password("same")
    assert h1 != h2 and access.verify_password("same", h1) and access.verify_password("same", h2)
    assert not access.verify_password("Same", h1)
    assert not access.verify_password("same", "plain-text-not-a-hash")
    assert not access.verify_password("same", None)


def test_login_with_users_file_and_studio_auth(tmp_path, users_file):
    s = settings_for(tmp_path, users_file=users_file, auth="root:root-pw")
    assert access.check_login(s, "bob", "bob-secret-2")
    assert not access.check_login(s, "bob", "bob-secret-3")  # wrong password
    assert not access.check_login(s, "bob", "")
    assert not access.check_login(s, "nobody", "bob-secret-2")
    assert not access.check_login(s, "hf-dana", "")  # OAuth-only entry: no password sign-in
    assert access.check_login(s, "root", "root-pw") and not access.check_login(s, "root", "root-p")
    auth = access.gradio_auth(s)
    assert auth("alice", "alice-secret-1") and not auth("alice", "bob-secret-2")
    assert access.gradio_auth(settings_for(tmp_path)) is None  # nothing configured: no login page


def test_broken_users_file_is_a_config_error(tmp_path):
    bad = tmp_path / "users.json"
    bad.write_text('{"users": {"eve": {"role": "superuser", "password": "x"}}}')
    with pytest.raises(ConfigError, match="user 'eve' needs a role"):
        access.load_users(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="users file .* cannot be read"):
        access.check_login(settings_for(tmp_path, users_file=bad), "eve", "x")


# ---------------------------------------------------------------------------------------------- callers


def test_roles_of_password_users(tmp_path, users_file):
    s = settings_for(tmp_path, users_file=users_file, auth="root:root-pw")
    assert role_of(password_request("alice"), s) == "admin"
    assert role_of(password_request("bob"), s) == "editor"
    assert role_of(password_request("carol"), s) == "viewer"
    assert role_of(password_request("root"), s) == "admin"  # the STUDIO_AUTH user
    assert role_of(password_request("someone-removed"), s) == "viewer"  # signed in, then taken out of the file
    assert current_user(password_request("bob")) == "bob"
    c = caller(password_request("carol"), s)
    with pytest.raises(AccessDenied, match="you are signed in as viewer \\(carol\\)"):
        require(c, "editor", "Editing a conversation")


def test_roles_of_oauth_users(tmp_path, users_file):
    s = settings_for(tmp_path, users_file=users_file, oauth=True)
    assert current_user(oauth_request("hf-dana")) == "hf-dana"
    assert role_of(oauth_request("hf-dana"), s) == "editor"  # listed in the users file by name
    assert role_of(oauth_request("hf-stranger"), s) == "viewer"  # STUDIO_OAUTH_ROLE default
    assert role_of(oauth_request("hf-stranger"), settings_for(tmp_path, oauth=True, oauth_role="editor")) == "editor"
    # the STUDIO_AUTH user name through OAuth is NOT that admin: admin needs the password
    s2 = settings_for(tmp_path, oauth=True, auth="root:root-pw")
    assert role_of(oauth_request("root"), s2) == "viewer"
    # an expired OAuth sign-in is nobody
    assert current_user(oauth_request("hf-dana", expires_at=1.0)) is None
    assert role_of(oauth_request("hf-dana", expires_at=1.0), s) == "viewer"
    with pytest.raises(ValueError, match="STUDIO_OAUTH_ROLE 'owner' is not a role"):
        settings_for(tmp_path, oauth_role="owner")


def test_anonymous_is_admin_only_on_loopback_without_login(tmp_path, users_file):
    nobody = password_request(None)
    assert current_user(nobody) is None and current_user(None) is None
    assert role_of(nobody, settings_for(tmp_path)) == "admin"
    assert caller(None, settings_for(tmp_path, host="localhost")).how == "local"
    assert role_of(nobody, settings_for(tmp_path, host="::1")) == "admin"
    for host in ("0.0.0.0", "::", "192.168.1.20", ""):
        c = caller(nobody, settings_for(tmp_path, host=host))
        assert (c.role, c.how) == ("viewer", "public"), host
    assert role_of(nobody, settings_for(tmp_path), host="0.0.0.0") == "viewer"  # the host the server uses
    for kw in (dict(auth="root:pw"), dict(users_file=users_file), dict(oauth=True)):
        c = caller(nobody, settings_for(tmp_path, **kw))
        assert (c.role, c.how) == ("viewer", "anonymous"), kw


def _from(client_ip: str) -> gr.Request:
    """A ``gr.Request`` from nobody signed in, arriving from ``client_ip``."""
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b"",
             "client": (client_ip, 50000)}
    return gr.Request(request=StarletteRequest(scope), username=None, session_hash="s3")


def test_anonymous_from_another_machine_is_a_viewer_even_on_a_loopback_setting(tmp_path):
    s = settings_for(tmp_path)  # host 127.0.0.1, no login
    assert access.client_host(_from("192.0.2.50")) == "192.0.2.50"
    assert caller(_from("127.0.0.1"), s).role == "admin"
    c = caller(_from("192.0.2.50"), s)
    assert (c.role, c.how) == ("viewer", "public")


def test_read_only_makes_everyone_a_viewer(tmp_path, users_file):
    s = settings_for(tmp_path, users_file=users_file, auth="root:pw", read_only=True)
    for req in (password_request("alice"), password_request("root"), password_request(None)):
        assert role_of(req, s) == "viewer"
    assert role_of(None, settings_for(tmp_path, read_only=True)) == "viewer"  # even local and anonymous
    with pytest.raises(AccessDenied, match="read-only"):
        require(caller(password_request("alice"), s), "editor", "Editing")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_real_gradio_login_gives_the_users_role(tmp_path, users_file):
    """A real Gradio server with ``auth=gradio_auth(settings)``: a handler sees who signed in and their
    role; a wrong password does not get in."""
    from gradio_client import Client

    s = settings_for(tmp_path, users_file=users_file)

    def whoami(request: gr.Request) -> str:
        return f"{current_user(request)}|{role_of(request, s)}"

    def export(request: gr.Request) -> str:
        try:
            require(caller(request, s), "admin", "Export")
        except AccessDenied as e:  # as the page shows a user error
            raise gr.Error(str(e)) from e
        return "exported"

    with gr.Blocks() as demo:
        out = gr.Textbox()
        gr.Button("who").click(whoami, None, out, api_name="whoami")
        gr.Button("export").click(export, None, out, api_name="export")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, auth=access.gradio_auth(s),
                quiet=True, ssr_mode=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        bob = Client(url, auth=("bob", "bob-secret-2"), verbose=False)
        assert bob.predict(api_name="/whoami") == "bob|editor"
        with pytest.raises(Exception, match="Export needs the admin role; you are signed in as editor"):
            bob.predict(api_name="/export")
        alice = Client(url, auth=("alice", "alice-secret-1"), verbose=False)
        assert alice.predict(api_name="/whoami") == "alice|admin"
        assert alice.predict(api_name="/export") == "exported"
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("bob", "wrong-password"), verbose=False)
    finally:
        demo.close()


# ---------------------------------------------------------------------------------------------- API keys


def test_api_keys_hashed_at_rest_and_verified(tmp_path):
    path = tmp_path / "keys.json"
    key = access.add_api_key(path, "laptop")
    key2 = access.add_api_key(path, "ci")
    assert key.startswith("wvs-") and len(key) > 40 and key != key2
    text = path.read_text()
    assert key not in text and key2 not in text
    assert access.hash_api_key(key) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    s = settings_for(tmp_path, api_keys_file=path)
    assert access.verify_api_key(s, key) == "laptop"
    assert access.verify_api_key(s, key2) == "ci"
    assert access.verify_api_key(s, key + "x") is None
    assert access.verify_api_key(s, "") is None and access.verify_api_key(s, None) is None
    with pytest.raises(ValueError, match="exists already"):
        access.add_api_key(path, "laptop")
    access.remove_api_key(path, "laptop")
    assert access.verify_api_key(s, key) is None and access.verify_api_key(s, key2) == "ci"


def test_when_v1_needs_a_key(tmp_path, users_file):
    keys = tmp_path / "keys.json"
    assert access.check_api_config(settings_for(tmp_path)) is None  # loopback, no login: open
    for kw, why in ((dict(auth="root:pw"), "a login is configured"), (dict(users_file=users_file), "login"),
                    (dict(oauth=True), "login"), (dict(host="0.0.0.0"), "beyond this machine")):
        with pytest.raises(ConfigError, match=f"needs API keys because .*{why}.*add-key"):
            access.check_api_config(settings_for(tmp_path, api_keys_file=keys, **kw))
    access.add_api_key(keys, "k")
    assert "login" in access.check_api_config(settings_for(tmp_path, auth="root:pw", api_keys_file=keys))
    assert access.check_api_config(settings_for(tmp_path, api_keys_file=keys)) == "API keys are configured"


# ---------------------------------------------------------------------------------------------- command line


def _cli(*args, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.pop("STUDIO_USERS_FILE", None)
    e.pop("STUDIO_API_KEYS_FILE", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "studio.access", *args], input=stdin, capture_output=True,
                          text=True, env=e, cwd=ROOT, timeout=120)


def test_command_line_adds_users_and_keys(tmp_path):
    users = tmp_path / "users.json"
    r = _cli("add-user", "erin", "--role", "editor", "--file", str(users), "--password-stdin",
             stdin="erin-pw-9\n")
    assert r.returncode == 0, r.stderr
    assert "erin-pw-9" not in users.read_text()
    assert access.check_login(settings_for(tmp_path, users_file=users), "erin", "erin-pw-9")
    assert role_of(password_request("erin"), settings_for(tmp_path, users_file=users)) == "editor"
    # without a file: the entry to paste is printed
    r = _cli("add-user", "frank", "--role", "admin", "--password-stdin", stdin="frank-pw\n")
    assert r.returncode == 0 and '"frank": {"role": "admin", "password": "scrypt$' in r.stdout
    r = _cli("add-user", "../evil", "--password-stdin", stdin="x\n")
    assert r.returncode == 2 and "user name '../evil' is not allowed" in r.stderr

    keys = tmp_path / "keys.json"
    r = _cli("add-key", "laptop", env={"STUDIO_API_KEYS_FILE": str(keys)})
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("wvs-") and key not in keys.read_text()
    assert access.verify_api_key(settings_for(tmp_path, api_keys_file=keys), key) == "laptop"
    r = _cli("add-key", "other")
    assert r.returncode == 2 and "STUDIO_API_KEYS_FILE" in r.stderr


# ---------------------------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize("name", ["..", ".", "", ".hidden", "a/b", "..\\x", "a b", "x" * 65, "名前", "a\nb"])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="^run name '.*' is not allowed: use 1-64 letters"):
        safe_child(tmp_path, name, "run name")


@pytest.mark.parametrize("name", ["a", "run-1", "v1.2_final", "X" * 64, "-dash", "_u", "a..b"])
def test_safe_names_stay_inside(tmp_path, name):
    p = safe_child(tmp_path, name)
    assert p.parent == tmp_path.resolve() and p.name == name
    assert check_name(name) == name


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "escape").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="export name 'escape' leads outside"):
        safe_child(folder, "escape", "export name")


def test_endpoint_key_allow_list_setting_never_echoes_a_key(tmp_path):
    s = settings_for(tmp_path, endpoint_key_envs="HF_TOKEN, OPENAI_API_KEY,,")
    assert s.endpoint_key_envs == ("HF_TOKEN", "OPENAI_API_KEY")
    assert settings_for(tmp_path).endpoint_key_envs == ()
    with pytest.raises(ValueError, match="item 2 is not an environment variable name") as e:
        settings_for(tmp_path, endpoint_key_envs="HF_TOKEN,sk-proj-abc123secret")
    assert "sk-proj" not in str(e.value)
