"""The command line while the page is open: commands sent to the running studio over loopback HTTP.

DuckDB lets one process write a database file, so while ``make run`` holds the data folder a second process
(``wvstudio import ...``) cannot open it. The running studio therefore publishes a *control file* in its data
folder, ``.studio-server.json`` (``{"pid", "url", "token"}``, mode 0600, removed when the server stops, also on
SIGTERM/SIGINT: ``studio.server.launch``), and
serves one route, ``POST /studio/cli``. A command that finds the database held reads that file and sends its
parsed arguments there with the token; the studio runs the same command function on its own open database
and streams back what the command printed, as JSON lines:

    {"stream": "out" | "err", "text": str}     (any number)
    {"rc": int}                                (last line: the command's exit code)

Security: the route answers only clients on the loopback interface that present the token (compared in
constant time); the token is random per server start and readable only by the data folder's owner, who may
run any command on that folder anyway. So a forwarded command is the local machine's own user's: its path
arguments (``export --out``, ``export-model --out``, ``import FILE``, ...) are real paths, as on the command line,
and are deliberately not confined to the data folder; the page's own exports are names inside
``<data>/exports`` (``RunManager.export_folder``). Anyone who could read the 0600 control file could already
write anywhere the server's user can. ``POST /studio/cli/interrupt`` (same checks) delivers a Ctrl-C to a
running command (cooperatively: the job watcher checks for it where it waits), so ``expand`` or ``train`` stop
their job exactly as they do locally.

This module imports neither the page (``studio.ui``) nor the command line (``studio.cli``): the server
assembly (``studio.server``) passes the command runner in.
"""

from __future__ import annotations

import hmac
import io
import json
import os
import queue
import secrets
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterator, TextIO

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

CONTROL_FILE = ".studio-server.json"
"""Name of the control file in the data folder."""

ROUTE = "/studio/cli"
LOOPBACK = ("127.0.0.1", "::1", "localhost")

Runner = Callable[[dict, threading.Event], int]
"""``runner(payload, interrupt) -> exit code``: runs one command (see ``studio.cli.run_payload``); what it
prints on ``sys.stdout``/``sys.stderr`` from its thread is captured and streamed. ``interrupt`` is set when the
client presses Ctrl-C or goes away; a command that waits (a job watcher) checks it where it would sleep and
behaves as on Ctrl-C."""


# ---------------------------------------------------------------------------------------------- control file


def control_path(data_dir: str | os.PathLike) -> Path:
    """The control file of a data folder."""
    return Path(data_dir) / CONTROL_FILE


def write_control(data_dir: str | os.PathLike, url: str) -> dict:
    """Publish this process as the studio serving ``data_dir`` at ``url`` (a loopback URL).

    Returns:
        ``{"pid", "url", "token"}`` as written (the file is created with mode 0600, atomically).
    """
    info = {"pid": os.getpid(), "url": url.rstrip("/"), "token": secrets.token_urlsafe(32)}
    path = control_path(data_dir)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info, f)
    os.replace(tmp, path)
    return info


def remove_control(data_dir: str | os.PathLike, info: dict) -> None:
    """Remove the control file if it is still this server's (another studio may have replaced it)."""
    path = control_path(data_dir)
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("token") == info.get("token"):
            path.unlink()
    except (OSError, ValueError):
        pass


def remove_own_control(data_dir: str | os.PathLike) -> bool:
    """Remove the control file if its ``pid`` is this process's (the exit path of ``studio.server.launch``:
    atexit and its SIGTERM/SIGINT handlers). Safe to call from a Python signal handler: it reads and unlinks one
    small file, takes no lock, and never raises.

    Returns:
        Whether a file was removed.
    """
    path = control_path(data_dir)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(info, dict) and info.get("pid") == os.getpid():
            path.unlink()
            return True
    except (OSError, ValueError):
        pass
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return isinstance(pid, int)
    return True


def find_server(data_dir: str | os.PathLike) -> dict | None:
    """The running studio that serves ``data_dir``, or None (no control file, unreadable, process gone).

    Returns:
        ``{"pid", "url", "token"}``.
    """
    try:
        info = json.loads(control_path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not all(k in info for k in ("pid", "url", "token")):
        return None
    return info if _pid_alive(info["pid"]) else None


def loopback_url(host: str, port: int) -> str:
    """The URL a local command uses to reach a server listening on ``host:port`` (any-address -> loopback)."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{int(port)}"


# ---------------------------------------------------------------------------------------------- client


class ServerUnreachable(Exception):
    """The control file names a studio that does not answer (stopped uncleanly, or another host)."""


def forward(info: dict, payload: dict, out: TextIO, err: TextIO, timeout: float = 10.0) -> int:
    """Run a command in the running studio and copy what it prints to ``out``/``err``.

    Args:
        info: ``find_server``'s answer.
        payload: the parsed command (``studio.cli.payload_of``), JSON-serialisable.
        timeout: seconds to wait for the connection and for each line (a command that prints nothing for
            longer still runs: progress bars print at least every few seconds).

    Returns:
        The command's exit code (130 if interrupted here; the running command is sent a Ctrl-C too).

    Raises:
        ServerUnreachable: nothing answered at the URL, or it refused the token.
    """
    request_id = uuid.uuid4().hex
    body = json.dumps({"id": request_id, "payload": payload}).encode()
    req = urllib.request.Request(info["url"] + ROUTE, data=body, method="POST", headers={
        "Authorization": f"Bearer {info['token']}", "Content-Type": "application/json"})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - a loopback URL from our own file
    except urllib.error.HTTPError as e:
        raise ServerUnreachable(f"the studio at {info['url']} refused the command ({e.code})") from e
    except (urllib.error.URLError, OSError) as e:
        raise ServerUnreachable(f"no studio answers at {info['url']} ({getattr(e, 'reason', e)})") from e
    rc = None
    try:
        with resp:
            while True:
                try:
                    line = resp.readline()
                except TimeoutError:
                    continue
                if not line:
                    break
                msg = json.loads(line)
                if "rc" in msg:
                    rc = int(msg["rc"])
                    break
                stream = out if msg.get("stream") == "out" else err
                stream.write(msg.get("text", ""))
                stream.flush()
    except KeyboardInterrupt:
        _interrupt(info, request_id, timeout)
        return 130
    if rc is None:
        print("error: the studio closed the connection before the command ended", file=err)
        return 2
    return rc


def _interrupt(info: dict, request_id: str, timeout: float) -> None:
    req = urllib.request.Request(info["url"] + ROUTE + "/interrupt", method="POST",
                                 data=json.dumps({"id": request_id}).encode(),
                                 headers={"Authorization": f"Bearer {info['token']}",
                                          "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=timeout).close()  # noqa: S310
    except (urllib.error.URLError, OSError):
        pass


# ---------------------------------------------------------------------------------------------- server


class _ThreadStreams(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: text written by a thread that registered a sink goes to
    that sink, everything else to the original stream. Installed once per process."""

    def __init__(self, original: TextIO, name: str):
        self._original = original
        self._name = name
        self._sinks: dict[int, Callable[[str, str], None]] = {}

    def write(self, s: str) -> int:
        sink = self._sinks.get(threading.get_ident())
        if sink is None:
            return self._original.write(s)
        sink(self._name, s)
        return len(s)

    def flush(self) -> None:
        if threading.get_ident() not in self._sinks:
            self._original.flush()

    def isatty(self) -> bool:
        return False if threading.get_ident() in self._sinks else self._original.isatty()

    @property
    def encoding(self):  # noqa: D401 - file protocol
        return getattr(self._original, "encoding", "utf-8")

    def fileno(self) -> int:
        return self._original.fileno()


_streams_lock = threading.Lock()


def _install_streams() -> tuple[_ThreadStreams, _ThreadStreams]:
    with _streams_lock:
        if not isinstance(sys.stdout, _ThreadStreams):
            sys.stdout = _ThreadStreams(sys.stdout, "out")
        if not isinstance(sys.stderr, _ThreadStreams):
            sys.stderr = _ThreadStreams(sys.stderr, "err")
        return sys.stdout, sys.stderr


def make_router(token: str, runner: Runner):
    """The ``POST /studio/cli`` and ``POST /studio/cli/interrupt`` routes.

    Args:
        token: the secret from ``write_control``; requests without ``Authorization: Bearer <token>`` get 401.
        runner: runs one command payload in the calling thread and returns its exit code.

    Returns:
        A FastAPI ``APIRouter`` (not in the OpenAPI schema). Requests from outside the loopback interface get
        403.
    """
    router = APIRouter()
    running: dict[str, threading.Event] = {}

    def refused(request: Request) -> JSONResponse | None:
        host = request.client.host if request.client else ""
        if host not in LOOPBACK:
            return JSONResponse({"error": "the command-line route answers loopback clients only"}, 403)
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return JSONResponse({"error": "missing or wrong token"}, 401)
        return None

    @router.post(ROUTE, include_in_schema=False)
    async def run_command(request: Request):
        bad = refused(request)
        if bad is not None:
            return bad
        try:
            body = await request.json()
            request_id, payload = str(body["id"]), body["payload"]
            if not isinstance(payload, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "the body must be {\"id\": str, \"payload\": {...}}"}, 400)
        return StreamingResponse(_stream(request_id, payload), media_type="application/x-ndjson")

    def _stream(request_id: str, payload: dict) -> Iterator[str]:
        out_stream, err_stream = _install_streams()
        lines: "queue.Queue[dict]" = queue.Queue()
        interrupt = running[request_id] = threading.Event()

        def work() -> None:
            ident = threading.get_ident()
            sink = lambda name, text: lines.put({"stream": name, "text": text})  # noqa: E731
            out_stream._sinks[ident] = err_stream._sinks[ident] = sink
            rc = 2
            try:
                rc = runner(payload, interrupt)
            except KeyboardInterrupt:
                sink("err", "interrupted\n")
                rc = 130
            except BaseException as e:  # noqa: BLE001 - reported to the client, the server stays up
                sink("err", f"error: {e.__class__.__name__}: {e}\n")
            finally:
                running.pop(request_id, None)
                out_stream._sinks.pop(ident, None)
                err_stream._sinks.pop(ident, None)
                lines.put({"rc": rc})

        worker = threading.Thread(target=work, daemon=True, name=f"cli-{request_id[:8]}")
        worker.start()
        try:
            while True:
                msg = lines.get()
                yield json.dumps(msg) + "\n"
                if "rc" in msg:
                    return
        finally:  # the client went away mid-command: stop the command as Ctrl-C would
            interrupt.set()

    @router.post(ROUTE + "/interrupt", include_in_schema=False)
    async def interrupt(request: Request):
        bad = refused(request)
        if bad is not None:
            return bad
        try:
            request_id = str((await request.json())["id"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "the body must be {\"id\": str}"}, 400)
        event = running.get(request_id)
        if event is not None:
            event.set()
        return {"interrupted": event is not None}

    return router
