"""Users, roles and API keys: the ONE guard every page handler and every route calls.

Roles, weakest first (``ROLES``)::

    viewer  browse, chat, vote, the Arena leaderboard
    editor  + edit data, run expansion, evolution, judging, import Arena battles
    admin   + train, delete, export (conversations, Arena battles, preference pairs), push, manage models and
            endpoints

A handler asks ``require(caller(request, settings), "admin", "Export")``; the guard raises ``AccessDenied``
with a message saying which role the action needs and who the caller is.

Who the caller is (``current_user``): the name Gradio's password login put on the ``gr.Request``
(``request.username``), else the Hugging Face account of an OAuth sign-in (a Space with ``hf_oauth: true``:
Gradio keeps the profile in the session, ``session["oauth_info"]["userinfo"]["preferred_username"]``, the
same data it injects as ``gr.OAuthProfile.username``), else nobody.

Their role (``role_of``), first rule that applies:

1. ``STUDIO_READ_ONLY=1`` (demo mode): everyone is a ``viewer``.
2. Signed in with a password: the ``STUDIO_AUTH`` user is ``admin``; a users-file user has the file's role.
3. Signed in with Hugging Face: the users file's role when the account is listed there by name, else
   ``STUDIO_OAUTH_ROLE`` (default ``viewer``).
4. Nobody signed in: ``admin`` only when no login is configured *and* the server listens on loopback *and*
   the request comes from loopback (one person on their own machine; note that a reverse proxy in front of a
   loopback server makes it public: configure a login then); otherwise ``viewer``.

Users file (``STUDIO_USERS_FILE``), JSON, written by ``python -m studio.access add-user``::

    {"users": {
        "alice": {"role": "admin",  "password": "scrypt$16384$8$1$<salt base64>$<hash base64>"},
        "bob":   {"role": "editor", "password": "scrypt$..."},
        "carol-hf": {"role": "editor"}
    }}

A user without ``password`` cannot sign in with a password; the entry only gives a Hugging Face (OAuth)
account its role. Passwords are hashed with scrypt (n=2**14, r=8, p=1, 16-byte random salt per user, RFC 7914)
and compared in constant time. The file is re-read when it changes.

API keys for ``/v1`` (``STUDIO_API_KEYS_FILE``), JSON, written by ``python -m studio.access add-key``::

    {"keys": [{"name": "laptop", "sha256": "<hex of sha256(key)>", "prefix": "wvs-AbCd", "created": "..."}]}

A key is ``wvs-`` + 32 random bytes (``secrets.token_urlsafe``), shown once when created; only its SHA-256
is stored (a fast hash is enough for a high-entropy key). Verification hashes the presented key and compares
it with every stored hash in constant time.

Command line::

    python -m studio.access add-user NAME --role editor [--file users.json] [--password-stdin]
    python -m studio.access hash-password [--password-stdin]
    python -m studio.access add-key NAME [--file api_keys.json]
    python -m studio.access remove-key NAME [--file api_keys.json]
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import ROLES, Settings
from .paths import check_name, safe_child  # noqa: F401  (re-exported: the guard for names that become paths)

ANONYMOUS_LOCAL = "local"
"""``Caller.how`` of the one person using a studio on loopback with no login configured (an admin)."""


class AccessDenied(PermissionError):
    """The caller's role is below what the action needs. The message names the action, the role it needs and
    the caller's role (or asks them to sign in)."""


class ConfigError(Exception):
    """The access settings cannot be served safely or cannot be read (e.g. ``/v1`` would be open to a
    network with no API key configured, or the users file is broken). The message says what to set."""


@dataclass(frozen=True)
class Caller:
    """Who is asking, as far as the server knows.

    Attributes:
        name: the signed-in user name, or None for nobody.
        role: ``viewer``, ``editor`` or ``admin``.
        how: ``password`` (Gradio login), ``oauth`` (Hugging Face), ``local`` (nobody signed in, loopback, no
            login configured), ``anonymous`` (nobody signed in, a login exists), ``public`` (nobody signed
            in, no login configured, beyond loopback).
        read_only: the studio runs in demo mode (``STUDIO_READ_ONLY=1``).
    """

    name: str | None
    role: str
    how: str = "anonymous"
    read_only: bool = False


# ---------------------------------------------------------------------------------------------- roles


def rank(role: str) -> int:
    """Position of ``role`` in ``ROLES`` (viewer 0, editor 1, admin 2). Raises ValueError for an unknown
    role, naming the roles."""
    try:
        return ROLES.index(role)
    except ValueError:
        raise ValueError(f"unknown role '{role}' (one of {', '.join(ROLES)})") from None


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` is at least ``needed``."""
    return rank(role) >= rank(needed)


def require(user: Caller, role: str, action: str) -> Caller:
    """The guard: return ``user`` if their role is at least ``role``, else raise ``AccessDenied``.

    Args:
        user: the caller (``caller(request, settings)``).
        role: the least role the action needs (``viewer``, ``editor``, ``admin``).
        action: the action in words, capitalised as the start of a sentence (``"Export"``,
            ``"Adding a model"``).

    Raises:
        AccessDenied: e.g. ``"Export needs the admin role; you are signed in as viewer (bob)"``,
            ``"Export needs the admin role; sign in"`` (nobody signed in, a login exists),
            ``"... this studio is read-only (demo mode): everyone is a viewer"``.
        ValueError: ``role`` is not a role.
    """
    if allows(user.role, role):
        return user
    head = f"{action[:1].upper()}{action[1:]} needs the {role} role"
    if user.read_only:
        raise AccessDenied(f"{head}; this studio is read-only (demo mode): everyone is a viewer")
    if user.name:
        raise AccessDenied(f"{head}; you are signed in as {user.role} ({user.name})")
    if user.how == "public":
        raise AccessDenied(f"{head}; this studio has no sign-in, so visitors are viewers (its operator sets "
                           "users up with STUDIO_USERS_FILE or STUDIO_AUTH)")
    raise AccessDenied(f"{head}; sign in")


# ---------------------------------------------------------------------------------------------- passwords

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_DUMMY_SALT = b"\x00" * 16


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password``: ``"scrypt$n$r$p$<salt b64>$<hash b64>"`` (n=16384, r=8, p=1,
    16-byte random salt, 32-byte hash; RFC 7914). Raises ValueError for an empty password."""
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches a ``hash_password`` string, compared in constant time.

    A missing or malformed ``stored`` still costs one scrypt (so timing does not tell whether a user
    exists) and returns False.
    """
    try:
        scheme, n, r, p, salt_b64, hash_b64 = (stored or "").split("$")
        if scheme != "scrypt":
            raise ValueError(scheme)
        n, r, p = int(n), int(r), int(p)
        if not (2 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError("scrypt parameters out of range")
        salt, expected = base64.b64decode(salt_b64, validate=True), base64.b64decode(hash_b64, validate=True)
    except (ValueError, TypeError):
        hashlib.scrypt(password.encode("utf-8"), salt=_DUMMY_SALT, dklen=32, **_SCRYPT)
        return False
    got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(expected) or 32,
                         maxmem=128 * r * n * 2 + 2**20)
    return hmac.compare_digest(got, expected)


# ---------------------------------------------------------------------------------------------- files

_cache: dict[Path, tuple[tuple[int, int], dict]] = {}
_cache_lock = threading.Lock()


def _read_json(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (re-read when its size or mtime changes); ``{}`` if the file is absent.

    Raises:
        ConfigError: the file cannot be parsed or is not a JSON object.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    stamp = (st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(path)
        if hit and hit[0] == stamp:
            return hit[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    with _cache_lock:
        _cache[path] = (stamp, data)
    return data


def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically, readable by the owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def load_users(path: str | os.PathLike | None) -> dict[str, dict]:
    """The users of a users file: ``{name: {"role": str, "password": str | None}}`` (``{}`` for None or a
    missing file).

    Raises:
        ConfigError: unreadable file, or a user with a bad name or an unknown role (named).
    """
    if not path:
        return {}
    path = Path(path)
    users = _read_json(path, "users file").get("users", {})
    if not isinstance(users, dict):
        raise ConfigError(f"users file {path}: 'users' must be an object of name -> {{role, password}}")
    out = {}
    for name, entry in users.items():
        if not isinstance(entry, dict) or entry.get("role") not in ROLES:
            raise ConfigError(f"users file {path}: user '{name}' needs a role, one of {', '.join(ROLES)}")
        out[name] = {"role": entry["role"], "password": entry.get("password") or None}
    return out


def add_user(path: str | os.PathLike, name: str, role: str, password: str | None) -> dict:
    """Add or replace a user in a users file (created if absent, mode 0600).

    Args:
        name: the user name (``paths.check_name`` rules; a Hugging Face user name also fits them).
        role: ``viewer``, ``editor`` or ``admin``.
        password: stored hashed; None for an OAuth-only entry (no password sign-in).

    Returns:
        The entry written: ``{"role", "password"?: hash}``.

    Raises:
        ValueError: bad name, role or empty password. ConfigError: the existing file is broken.
    """
    check_name(name, "user name")
    rank(role)
    entry = {"role": role}
    if password is not None:
        entry["password"] = hash_password(password)
    path = Path(path)
    data = dict(_read_json(path, "users file"))
    users = dict(data.get("users") or {})
    users[name] = entry
    data["users"] = users
    _write_json(path, data)
    return entry


def _auth_pair(settings: Settings) -> tuple[str, str] | None:
    if not settings.auth:
        return None
    if ":" not in settings.auth:
        raise ConfigError("STUDIO_AUTH must be 'user:password'")
    user, password = settings.auth.split(":", 1)
    if not user or not password:
        raise ConfigError("STUDIO_AUTH must be 'user:password' with both parts non-empty")
    return user, password


def check_login(settings: Settings, username: str, password: str) -> bool:
    """Whether ``username``/``password`` may sign in: the ``STUDIO_AUTH`` pair, or a users-file user with a
    password. Passwords are compared in constant time; an unknown user costs as much as a known one."""
    username = (username or "").strip()
    password = password or ""
    pair = _auth_pair(settings)
    if pair and hmac.compare_digest(username.encode(), pair[0].encode()):
        return hmac.compare_digest(password.encode(), pair[1].encode())
    entry = load_users(settings.users_file).get(username)
    return verify_password(password, entry["password"] if entry else None)


def gradio_auth(settings: Settings) -> Callable[[str, str], bool] | None:
    """A callable for Gradio's ``auth=`` (``(username, password) -> bool``, see ``check_login``), or None
    when no password login is configured (no ``STUDIO_AUTH``, no users-file user with a password)."""
    if not _auth_pair(settings) and not any(u["password"] for u in load_users(settings.users_file).values()):
        return None
    return lambda username, password: check_login(settings, username, password)


# ---------------------------------------------------------------------------------------------- callers


def is_loopback(host: str | None) -> bool:
    """Whether a listening address reaches this machine only (``127.0.0.0/8``, ``::1``, ``localhost``).
    ``0.0.0.0``, ``::`` and empty are every interface: False."""
    host = (host or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def login_configured(settings: Settings) -> bool:
    """Whether anyone can sign in: ``STUDIO_AUTH``, a users-file user with a password, or Hugging Face
    OAuth (``settings.oauth``)."""
    return bool(settings.oauth or _auth_pair(settings)
                or any(u["password"] for u in load_users(settings.users_file).values()))


def _session(request) -> dict:
    """The Starlette session of a ``gr.Request``/``fastapi.Request`` (empty without SessionMiddleware);
    mirrors ``gradio.helpers._session_from_request``."""
    if request is None:
        return {}
    underlying = getattr(request, "request", None) or request
    scope = getattr(underlying, "scope", None)
    if isinstance(scope, dict):
        return scope.get("session") or {}
    try:
        return getattr(underlying, "session", None) or {}
    except (AttributeError, AssertionError):
        return {}


def _identity(request) -> tuple[str | None, str]:
    """``(name, how)``: ``how`` is ``password``, ``oauth`` or ``""`` (nobody)."""
    if request is None:
        return None, ""
    name = getattr(request, "username", None)
    if isinstance(name, str) and name:
        return str(name), "password"
    info = _session(request).get("oauth_info") or {}
    expires = info.get("expires_at")
    if expires is not None and expires < time.time():
        return None, ""
    name = (info.get("userinfo") or {}).get("preferred_username")
    return (str(name), "oauth") if name else (None, "")


def client_host(request) -> str | None:
    """The peer address of a ``gr.Request``/``fastapi.Request`` (``request.client.host``), or None when
    unknown."""
    if request is None:
        return None
    underlying = getattr(request, "request", None) or request
    client = getattr(underlying, "client", None)
    if client is None and hasattr(request, "kwargs"):  # a queued gr.Request rebuilt from its kwargs
        client = request.kwargs.get("client")
    host = client.get("host") if isinstance(client, dict) else getattr(client, "host", None)
    return str(host) if host else None


def current_user(request) -> str | None:
    """The signed-in user's name for a ``gr.Request`` (``request.username`` after a password login, else the
    Hugging Face user name of an OAuth sign-in), or None."""
    return _identity(request)[0]


def caller(request, settings: Settings, host: str | None = None) -> Caller:
    """Who is asking and with which role (rules in the module docstring).

    Args:
        request: a ``gr.Request`` (or None: nobody signed in).
        settings: the studio's settings.
        host: the address the server listens on (default ``settings.host``).

    Raises:
        ConfigError: the users file or ``STUDIO_AUTH`` is broken.
    """
    name, how = _identity(request)
    ro = bool(settings.read_only)
    if name:
        pair = _auth_pair(settings)
        if how == "password" and pair and hmac.compare_digest(name.encode(), pair[0].encode()):
            role = "admin"
        else:
            entry = load_users(settings.users_file).get(name)
            role = entry["role"] if entry else (settings.oauth_role if how == "oauth" else "viewer")
    elif (not login_configured(settings) and is_loopback(host if host is not None else settings.host)
          and is_loopback(client_host(request) or "127.0.0.1")):
        role, how = "admin", ANONYMOUS_LOCAL
    else:
        role, how = "viewer", "anonymous" if login_configured(settings) else "public"
    return Caller(name, "viewer" if ro else role, how, ro)


def role_of(request, settings: Settings, host: str | None = None) -> str:
    """The caller's role: ``viewer``, ``editor`` or ``admin`` (see ``caller``)."""
    return caller(request, settings, host).role


# ---------------------------------------------------------------------------------------------- API keys

KEY_PREFIX = "wvs-"
"""Start of every API key this studio makes."""


def hash_api_key(key: str) -> str:
    """Hex SHA-256 of a key (what the keys file stores)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_api_keys(path: str | os.PathLike | None) -> list[dict]:
    """The entries of a keys file, ``[{"name", "sha256", ...}]`` (``[]`` for None or a missing file).

    Raises:
        ConfigError: unreadable file or an entry without a 64-hex ``sha256``.
    """
    if not path:
        return []
    path = Path(path)
    keys = _read_json(path, "API keys file").get("keys", [])
    if not isinstance(keys, list):
        raise ConfigError(f"API keys file {path}: 'keys' must be a list")
    for i, k in enumerate(keys, 1):
        h = k.get("sha256") if isinstance(k, dict) else None
        if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
            raise ConfigError(f"API keys file {path}: entry {i} has no 64-hex 'sha256'")
    return keys


def add_api_key(path: str | os.PathLike, name: str) -> str:
    """Create an API key, store its hash under ``name`` in the keys file (created if absent, mode 0600) and
    return the key: the only time it is visible.

    Raises:
        ValueError: bad name (``paths.check_name``) or one already used. ConfigError: broken file.
    """
    check_name(name, "key name")
    path = Path(path)
    data = dict(_read_json(path, "API keys file"))
    keys = list(load_api_keys(path))
    if any(k.get("name") == name for k in keys):
        raise ValueError(f"an API key named '{name}' exists already in {path}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    keys.append({"name": name, "sha256": hash_api_key(key), "prefix": key[:8],
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    data["keys"] = keys
    _write_json(path, data)
    return key


def remove_api_key(path: str | os.PathLike, name: str) -> None:
    """Delete the key called ``name`` from the keys file. Raises ValueError if there is none."""
    path = Path(path)
    data = dict(_read_json(path, "API keys file"))
    keys = load_api_keys(path)
    kept = [k for k in keys if k.get("name") != name]
    if len(kept) == len(keys):
        raise ValueError(f"no API key named '{name}' in {path}")
    data["keys"] = kept
    _write_json(path, data)


def verify_api_key(settings: Settings, key: str | None) -> str | None:
    """The name of the stored key matching ``key`` (every stored hash is compared, in constant time), or
    None."""
    if not key:
        return None
    got = hash_api_key(key)
    found = None
    for entry in load_api_keys(settings.api_keys_file):
        if hmac.compare_digest(got, entry["sha256"]):
            found = found or entry.get("name") or entry.get("prefix") or "key"
    return found


def api_key_required(settings: Settings, host: str | None = None) -> str | None:
    """Why ``/v1`` must ask for ``Authorization: Bearer <key>``, or None when it stays open.

    A key is required when a login is configured, when the server listens beyond loopback, or when the
    keys file holds keys. Open only on loopback with no login and no key configured (one person on their own
    machine, as before).
    """
    host = host if host is not None else settings.host
    if login_configured(settings):
        return "a login is configured"
    if not is_loopback(host):
        return f"the server listens on {host or 'every interface'}, beyond this machine"
    if load_api_keys(settings.api_keys_file):
        return "API keys are configured"
    return None


def check_api_config(settings: Settings, host: str | None = None) -> str | None:
    """Check that ``/v1`` can be served safely; returns ``api_key_required``'s reason (None: open).

    Raises:
        ConfigError: a key is required but no key is configured, with the command that creates one; or the
            users/keys files or ``STUDIO_AUTH`` are broken.
    """
    load_users(settings.users_file)
    why = api_key_required(settings, host)
    if why and not load_api_keys(settings.api_keys_file):
        where = settings.api_keys_file or "api_keys.json"
        raise ConfigError(
            f"the /v1 API needs API keys because {why}, and none is configured: create one with "
            f"'python -m studio.access add-key NAME --file {where}' and set STUDIO_API_KEYS_FILE={where} "
            "(or turn the API off with STUDIO_API=0)")
    return why


# ---------------------------------------------------------------------------------------------- command line


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise ValueError("the two passwords differ")
    return first


def main(argv: list[str] | None = None) -> int:
    """``python -m studio.access``: add users, hash passwords, create and remove API keys (see the module
    docstring). Returns the exit status: 0, or 2 with the reason on stderr."""
    ap = argparse.ArgumentParser(prog="python -m studio.access", description="Users and API keys of the studio")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("add-user", help="add or replace a user in the users file")
    u.add_argument("name")
    u.add_argument("--role", choices=ROLES, default="viewer")
    u.add_argument("--file", help="users file (default $STUDIO_USERS_FILE); without one, the entry is printed")
    u.add_argument("--password-stdin", action="store_true", help="read the password from the first stdin line")
    u.add_argument("--no-password", action="store_true", help="Hugging Face (OAuth) user: a role, no password")
    h = sub.add_parser("hash-password", help="print a password hash for the users file")
    h.add_argument("--password-stdin", action="store_true")
    for cmd, text in (("add-key", "create an API key (printed once)"), ("remove-key", "delete an API key")):
        k = sub.add_parser(cmd, help=text)
        k.add_argument("name")
        k.add_argument("--file", help="API keys file (default $STUDIO_API_KEYS_FILE)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "hash-password":
            print(hash_password(_read_password(args.password_stdin)))
        elif args.cmd == "add-user":
            password = None if args.no_password else _read_password(args.password_stdin)
            path = args.file or os.environ.get("STUDIO_USERS_FILE")
            if path:
                add_user(path, args.name, args.role, password)
                print(f"user '{args.name}' ({args.role}) written to {path}")
            else:
                check_name(args.name, "user name")
                entry = {"role": args.role, **({"password": hash_password(password)} if password else {})}
                print("Put this entry under \"users\" in the users file (STUDIO_USERS_FILE):")
                print(json.dumps({args.name: entry}))
        else:
            path = args.file or os.environ.get("STUDIO_API_KEYS_FILE")
            if not path:
                raise ValueError("give --file or set STUDIO_API_KEYS_FILE")
            if args.cmd == "add-key":
                key = add_api_key(path, args.name)
                print(f"API key '{args.name}' added to {path}. Copy it now, it is not shown again:")
                print(key)
            else:
                remove_api_key(path, args.name)
                print(f"API key '{args.name}' removed from {path}")
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
