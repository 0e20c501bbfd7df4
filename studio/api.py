"""OpenAI-compatible ``/v1`` routes over the model registry.

Any OpenAI client (the ``openai`` package, LangChain, another studio's registry) can list this studio's models
and chat with them, whatever their kind: a local checkpoint, the embedded default, or an endpoint behind it.

Routes (``make_router``):

- ``GET /v1/models``: every registry entry, ``{"object": "list", "data": [{"id", "object": "model", "created",
  "owned_by", "kind"}]}``.
- ``GET /v1/models/{name}``: one entry in the same shape, or 404.
- ``POST /v1/chat/completions``: request fields ``model, messages, max_tokens`` (or ``max_completion_tokens``),
  ``temperature, top_p, seed, stream``; other fields are accepted and ignored. Non-streamed, the answer is a
  ``chat.completion`` object with ``usage``; streamed (``stream: true``), Server-Sent Events of
  ``chat.completion.chunk`` objects ending with ``data: [DONE]``.

Access (``studio.access``): every route asks for ``Authorization: Bearer <key>`` whenever a login is
configured (``STUDIO_AUTH``, a users file with passwords, Hugging Face OAuth), the server listens beyond
loopback (``STUDIO_HOST=0.0.0.0``), or the keys file (``STUDIO_API_KEYS_FILE``) holds keys. Keys are created
with ``python -m studio.access add-key NAME``. In those situations, with no key configured, ``make_router``
and ``make_app`` raise ``ConfigError`` so the server refuses to start. On loopback with no login and no key,
the API is open to callers on this machine, for one person on their own machine (a caller from another
machine must still send a key, and gets 401 while none is configured). ``STUDIO_API=0`` turns the API off
(every route answers 403 ``api_disabled``). In read-only (demo) mode, ``STUDIO_READ_ONLY=1``, ``POST
/v1/chat/completions`` answers 403 ``read_only`` (the model list stays readable).

Errors have OpenAI's body ``{"error": {"message", "type", "code", "param"}}``:

- 401 ``invalid_api_key``: a key is required and the request has none, or not a configured one.
- 400 ``invalid_request_error``: the body is not JSON, a field has the wrong type or range, or the messages
  break the conversation rules (``studio.formats.validate_messages``, except that a request ends with a
  *user* message).
- 404 ``model_not_found``: no registry entry has that name.
- 502 ``upstream_error``: an endpoint entry failed (unreachable, refused key, bad answer).
- 500 ``server_error``: a local entry failed to load or generate.

A failure in the middle of a stream (after the first piece was sent) is sent as one last event
``data: {"error": {...}}``, which the ``openai`` client raises as ``APIError``.

Generation runs on the thread pool (``run_in_threadpool`` / ``iterate_in_threadpool``), never on the event
loop, so one slow generation does not block other requests (local models still generate one at a time:
each loaded model has a lock).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from typing import Any, AsyncIterator, Iterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from . import access
from .access import ConfigError
from .formats import DEFAULT_MAX_MESSAGE_CHARS, validate_messages
from .registry import GenParams, ModelSpec, RegistryError

OWNER = "wvstudio"
"""``owned_by`` of every model listed."""


class ChatMessage(BaseModel):
    """One request message. ``content`` is a string or a list of OpenAI content parts (text parts only)."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The content as one string (text parts joined with newlines)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise ValueError(f"content part of type '{p.get('type')}' is not supported (text only)")
            parts.append(p["text"])
        return "\n".join(parts)


class ChatRequest(BaseModel):
    """The fields of ``POST /v1/chat/completions`` that the studio uses.

    Unset sampling fields take ``registry.GenParams``'s defaults (512 tokens, temperature 0.7, top-p 0.9).
    """

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stream: bool = False
    n: int | None = Field(default=None, ge=1, le=1)

    def params(self) -> GenParams:
        """The request's sampling parameters."""
        p = GenParams()
        limit = self.max_completion_tokens or self.max_tokens
        if limit is not None:
            p.max_new_tokens = int(limit)
        if self.temperature is not None:
            p.temperature = float(self.temperature)
        if self.top_p is not None:
            p.top_p = float(self.top_p)
        p.seed = self.seed
        return p


_ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role


def error_response(status: int, message: str, type_: str, code: str | None = None,
                   param: str | None = None) -> JSONResponse:
    """An OpenAI-style error: ``{"error": {"message", "type", "code", "param"}}`` with HTTP ``status``."""
    return JSONResponse({"error": {"message": message, "type": type_, "code": code, "param": param}},
                        status_code=status)


def request_messages(req: ChatRequest, max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS) -> list[dict]:
    """The request's messages in the internal shape, checked.

    The rules are ``studio.formats.validate_messages``'s (optional leading system message, then user and
    assistant alternating, no empty or over-long text), except that the conversation must end with a user
    message: that is the turn being answered. ``developer`` is read as ``system``.

    Returns:
        ``[{"role", "content"}]``.

    Raises:
        ValueError: the reason, naming the 1-based message number.
    """
    if not req.messages:
        raise ValueError("'messages' is empty: send at least one user message")
    messages = []
    for i, m in enumerate(req.messages, 1):
        try:
            content = m.text()
        except ValueError as e:
            raise ValueError(f"message {i} ({m.role}): {e}") from None
        messages.append({"role": _ROLE_ALIASES.get(m.role, m.role), "content": content})
    last = messages[-1]
    if last["role"] != "user":
        raise ValueError(f"message {len(messages)} ({last['role']}): the conversation must end with a user "
                         "message (the turn to answer)")
    # validate_messages wants a finished conversation; give it a stand-in answer to the last user message.
    problem = validate_messages(messages + [{"role": "assistant", "content": "-"}], max_message_chars)
    if problem:
        raise ValueError(problem)
    return messages


def model_card(spec: ModelSpec) -> dict:
    """One registry entry as an OpenAI model object: ``{"id", "object": "model", "created", "owned_by",
    "kind"}`` (``created`` is 0: the registry keeps no creation time)."""
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": OWNER, "kind": spec.kind}


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


def _bearer(request: Request) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    scheme, _, value = (request.headers.get("authorization") or "").strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _disabled_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])

    @router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                      include_in_schema=False)
    async def disabled(rest: str) -> JSONResponse:
        return error_response(403, "this studio's /v1 API is turned off (STUDIO_API=0)", "invalid_request_error",
                              "api_disabled")

    return router


def make_router(studio, host: str | None = None) -> APIRouter:
    """The ``/v1`` routes over ``studio.registry`` (see the module docstring for shapes, access and errors).

    Args:
        studio: a ``studio.core.Studio`` (only its ``registry`` and ``settings`` are used; nothing is written).
        host: the address the server will listen on (default ``studio.settings.host``): beyond loopback, a
            key is required.

    Returns:
        An ``APIRouter`` with prefix ``/v1``, to include in any FastAPI app (``make_app``, or Gradio's).

    Raises:
        ConfigError: a key is required (a login is configured, or ``host`` is beyond loopback) but no API key
            is configured; the message gives the command that creates one. Also for a broken users or keys
            file. The server must not start.
    """
    settings = studio.settings
    if not getattr(settings, "api_enabled", True):
        return _disabled_router()
    key_required = access.check_api_config(settings, host)
    registry = studio.registry
    max_chars = getattr(settings, "max_message_chars", DEFAULT_MAX_MESSAGE_CHARS)
    router = APIRouter(prefix="/v1", tags=["openai"])

    def refused(request: Request) -> JSONResponse | None:
        """None when the request may go on, else the 401 to send. An open API still asks a key of a caller
        from another machine (the server may listen wider than ``host`` said)."""
        if not key_required and access.is_loopback(access.client_host(request) or "127.0.0.1"):
            return None
        key = _bearer(request)
        try:
            ok = access.verify_api_key(settings, key)
        except ConfigError:  # the keys file broke while serving: refuse, never open up
            ok = None
        if ok:
            return None
        message = ("Incorrect API key provided" if key else
                   "Missing API key: send the header 'Authorization: Bearer <key>' (keys are created with "
                   "'python -m studio.access add-key NAME')")
        r = error_response(401, message, "invalid_request_error", "invalid_api_key")
        r.headers["WWW-Authenticate"] = "Bearer"
        return r

    def not_found(name: str) -> JSONResponse:
        return error_response(404, f"The model '{name}' does not exist (known: {', '.join(registry.names())})",
                              "invalid_request_error", "model_not_found", "model")

    def failure(spec: ModelSpec, e: Exception) -> JSONResponse:
        if spec.kind == "endpoint":
            return error_response(502, str(e), "upstream_error", "upstream_error")
        return error_response(500, str(e), "server_error", "model_error")

    @router.get("/models")
    async def list_models(request: Request):
        """``{"object": "list", "data": [model, ...]}``, the default first."""
        if (denied := refused(request)) is not None:
            return denied
        specs = await run_in_threadpool(registry.list)
        return {"object": "list", "data": [model_card(s) for s in specs]}

    @router.get("/models/{name:path}")
    async def get_model(name: str, request: Request):
        """One model object, or 404 ``model_not_found``."""
        if (denied := refused(request)) is not None:
            return denied
        try:
            spec = await run_in_threadpool(registry.get, name)
        except RegistryError:
            return not_found(name)
        return model_card(spec)

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        """A chat completion (``chat.completion`` JSON, or an SSE stream of ``chat.completion.chunk``)."""
        if (denied := refused(request)) is not None:
            return denied
        if settings.read_only:  # demo mode: everyone is a viewer, and a chat here could load or convert a model
            return error_response(403, "this studio is read-only (demo mode, STUDIO_READ_ONLY=1): /v1 chat "
                                  "completions are turned off; chat in the page's Chat tab", "invalid_request_error",
                                  "read_only")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return error_response(400, "the request body is not valid JSON", "invalid_request_error",
                                  "invalid_json")
        try:
            req = ChatRequest.model_validate(body)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err.get("loc", ()))
            return error_response(400, f"{where}: {err.get('msg')}" if where else str(err.get("msg")),
                                  "invalid_request_error", "invalid_value", where or None)
        try:
            messages = request_messages(req, max_chars)
        except ValueError as e:
            return error_response(400, f"invalid messages: {e}", "invalid_request_error", "invalid_messages",
                                  "messages")
        try:
            spec = await run_in_threadpool(registry.get, req.model)
        except RegistryError:
            return not_found(req.model)
        params = req.params()
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        if not req.stream:
            try:
                out = await run_in_threadpool(registry.chat, spec.name, messages, params)
            except RegistryError as e:
                return failure(spec, e)
            return {
                "id": cid, "object": "chat.completion", "created": created, "model": spec.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                             "finish_reason": out.finish_reason, "logprobs": None}],
                "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                          "total_tokens": out.prompt_tokens + out.completion_tokens},
            }

        gone = threading.Event()  # set when the client goes away: the engine drops the reply within one step
        pieces: Iterator[str] = registry.stream_chat(spec.name, messages, params, should_stop=gone.is_set)
        # Take the first piece before answering, so that a model that will not load or an endpoint that
        # cannot be reached gets a proper status code instead of a broken stream.
        done = object()
        try:
            first = await run_in_threadpool(next, pieces, done)
        except RegistryError as e:
            return failure(spec, e)

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": spec.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        async def events() -> AsyncIterator[str]:
            try:
                yield _sse(chunk({"role": "assistant", "content": ""}))
                if first is not done:
                    if first:
                        yield _sse(chunk({"content": first}))
                    try:
                        async for piece in iterate_in_threadpool(pieces):
                            if piece:
                                yield _sse(chunk({"content": piece}))
                    except RegistryError as e:
                        kind = "upstream_error" if spec.kind == "endpoint" else "server_error"
                        yield _sse({"error": {"message": str(e), "type": kind, "code": kind, "param": None}})
                        return
                yield _sse(chunk({}, "stop"))
                yield _sse("[DONE]")
            finally:  # also when the client disconnected and the response was cancelled mid-stream
                gone.set()

        def end() -> None:  # the response is over: stop the reply even if no one reads the generator again
            gone.set()
            with contextlib.suppress(ValueError):  # "generator already executing": its reader sees ``gone``
                pieces.close()

        return _EndingStream(end, events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router


class _EndingStream(StreamingResponse):
    """A ``StreamingResponse`` that calls ``on_end()`` as soon as the response is over, however it ends: sent whole,
    or the client disconnected (Starlette then stops reading the body's generator and abandons it: the registry's
    stream would sit at its ``yield`` holding a row of the batch until garbage collection). The chat route passes the ``should_stop`` event's ``set``, so a
    local model's engine drops the reply within one decoding step."""

    def __init__(self, on_end, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_end = on_end

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await run_in_threadpool(self._on_end)  # may wait for one decoding step: off the event loop


def make_app(studio, host: str | None = None) -> FastAPI:
    """A FastAPI app serving ``make_router(studio, host)`` (``wvstudio serve-api``, tests).

    The web app mounts the same router on Gradio's own FastAPI app instead.

    Raises:
        ConfigError: as ``make_router``: a key is required and none is configured; do not start.
    """
    router = make_router(studio, host)
    app = FastAPI(title="WizardVicuna Studio API", version="1", docs_url="/docs", redoc_url=None)
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def root() -> dict:
        return {"name": "WizardVicuna Studio", "openai_base_url": "/v1"}

    return app
