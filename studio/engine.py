"""Generation scheduling for one loaded local model: every request for it (chat streams, ``Registry.chat`` and
``chat_batch`` for expansion, evolution, judging and the arena, ``/v1``) shares one running batch.

How it schedules
----------------
A decoding loop of our own over one padded batch that is **refilled between steps**:

- The batch keeps one ``transformers.DynamicCache`` (keys/values ``[rows, heads, T, head_dim]`` per layer), a 2-D
  attention mask ``[rows, T]`` (0 = left padding), each row's next position and its pending token (sampled, not yet
  in the cache).
- Each step (1) drops the rows whose request was cancelled, (2) runs one decoding forward for all rows, (3)
  prefills the requests waiting to join (left-padded among themselves, on a fresh cache) and appends them to the
  batch: both caches are left-padded to the same length and concatenated along the rows, (4) drops finished rows
  (EOS, a stop string, ``max_new_tokens``) and trims columns that have become padding in every row.
- So a request arriving mid-batch joins at the next step (it never waits for the batch to end), a finished or
  cancelled one frees its row at once, and a chat's first token comes after at most one decoding step plus its
  own prefill. Streamed requests are *interactive*: they go before queued batch requests and may use
  ``INTERACTIVE_ROWS`` rows beyond ``MAX_ROWS``, so a chat does not wait for an expansion's rows to free.
- **Prefix cache**: when a request ends (EOS, a stop string, ``max_new_tokens``), its row's keys/values (the prompt
  and the reply, cut out of the padded batch) are kept, up to ``PREFIX_CACHE_BYTES``, least recently used dropped
  first. A new prompt that starts with a kept sequence (longest common token prefix, at least
  ``PREFIX_MIN_TOKENS``) is prefilled only from where they differ, on a copy-free continuation of the kept cache.
  A conversation's next round (the history, the last reply, a new question), an expansion's next follow-up prompt
  (the transcript grows at its end), a judge prompt asked again, a chat's next turn: each re-reads only what is
  new. vLLM's automatic prefix caching does this per block on the GPU; here it is per request, since this loop
  keeps whole rows. Measured in ``bench/bench_engine.py`` (``expand`` part: ``prefix tokens reused``).
- **Per-step costs on CPU**, each measured where it is defined: the batch's keys/values live in buffers with spare
  columns (``_GrowingLayer``: no copy of the whole cache per step), decoding steps of up to ``ONE_THREAD_ROWS`` rows
  run on one intra-op thread off the main thread (``_one_thread``: GNU OpenMP throttles any other thread's team on
  this 2-core machine), the engine's forwards use float16 copies of a float32 model's linear weights
  (``pack_fp16``, ``CPU_WEIGHTS``; ``cpu_weights="fp32"`` for float32 token for token), and large blocks are
  mmapped so freed caches go back to the system (``_fixed_mmap_threshold``).
- No thread of its own: whichever caller is waiting for its request runs the next step for everybody
  (``_drive``, one at a time under ``_step_lock``), the others wait for that step's end. So nothing is left
  running when no one waits, and a ZeroGPU Space (``studio.gpu``), where generation runs inside the caller's GPU
  call, works the same way.

Why hand-written, measured (docs/notes: ``cpu-generation.md``; SmolLM2-135M-Instruct, float32, 2 CPU threads,
greedy, 128 new tokens, WizardLM test-set prompts, completion tokens per second):

=======================================================================  ======  ======
how                                                                       N = 8   N = 32
=======================================================================  ======  ======
HF ``generate``, one prompt at a time                                       9.8     (9.8)
one padded ``generate`` (the registry before this engine)                  35.9    52.6
transformers continuous batching, ``generate_batch``, ``paged|sdpa``       24.1    37.0
=======================================================================  ======  ======

transformers' own continuous batching (``generate_batch`` / ``ContinuousBatchingManager``, paged attention) is
the library's answer to this problem and runs on this CPU, but costs 30-33 % against a padded batch here; a
padded ``generate`` is fast but lockstep (every row waits for the longest, nothing joins, the whole call holds the
model). This loop keeps the padded batch's dense kernels and adds joining and leaving between steps. It uses the
library for everything else: the model's ``forward`` with ``DynamicCache`` (transformers 5.24 ``cache_utils``:
``DynamicCache(ddp_cache_data=..., config=...)``, ``DynamicLayer.batch_select_indices``), and the logits
processors of ``transformers.generation`` for sampling (``RepetitionPenaltyLogitsProcessor``,
``TemperatureLogitsWarper``, ``TopPLogitsWarper``). Measured with this engine: README "Benchmarks"
(``bench/bench_engine.py``). Profiled on an 8-seed, 3-round expansion (default model, 2 CPU threads), before
the prefix cache and one MKL thread for decoding: 174 s in all, 129 s in decoding forwards (551 steps, 4.4 rows on average,
0.23 s each where a solo forward takes 0.07-0.10 s), 37 s in prefills (31 joins), 4 s joining caches; after both,
104 s: 75 s decoding (454 steps, 0.14-0.19 s at 3-8 rows), 22 s prefilling 4,216 tokens (5,848 taken from the
prefix cache); with the growing buffers and one thread, 94 s (69 s decoding at 0.148 s a step, 18 s prefill);
with float16 weights too, 62-78 s (40 s decoding at 0.085 s a step, 15 s prefill). The steps cannot be fewer than
the longest seed's own chain of replies (its requests follow one another), so on this CPU, where an 8-row step
costs about twice a 1-row step, an 8-seed expansion is bound near 4x one-request-at-a-time even with free prefill.

Sampling parameters are per request and applied per row, so requests with different temperature, top-p,
repetition penalty or seed share a batch. Greedy rows take the arg-max (token for token what a solo HF
``generate`` gives, up to float rounding of the padded attention and, by default on CPU, of the float16 weights
(``pack_fp16``): tested in ``tests/test_engine.py``). A seeded
request samples from its own ``torch.Generator`` seeded with ``GenParams.seed``, so its answer does not depend on
what else shares the batch (it is not the same draw as HF ``generate`` with ``torch.manual_seed``). HF's default
top-k of 50 is not applied (the studio's parameters are temperature and top-p only).

Models whose cache is not made of plain ``DynamicLayer`` layers (sliding-window or other layer kinds) are still
served, but a batch is only formed when the engine is idle (no joining mid-batch): left-padding and
concatenating their caches would be wrong.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

MAX_ROWS = 32
"""Rows (sequences) a batch holds at most for batch requests: on 2 CPU cores the padded batch's throughput is
52.6 tok/s at 32 and 54.4 at 64 (``cpu-generation.md``), so wider only costs memory."""

INTERACTIVE_ROWS = 8
"""Extra rows only streamed (interactive) requests may use, so a chat starts while an expansion fills
``MAX_ROWS``."""

PREFILL_TOKENS = 4096
"""Padded prompt tokens prefilled in one step at most (at least one request always is), so one step that admits
many long prompts does not stall every running row for long."""

PREFIX_CACHE_BYTES = 1 << 30
"""Bytes of key/value cache kept from finished requests for reuse as prompt prefixes (``Engine`` prefix cache),
least recently used dropped first. The default model (SmolLM2-135M, float32) keeps 46 KiB per token, so 1 GiB holds
about 23,000 tokens: a 32-seed expansion's answer and follow-up threads. 0 turns the cache off."""

PREFIX_MIN_TOKENS = 32
"""A kept prefix is reused only when it covers at least this many tokens of a new prompt (a shorter one saves
less than a joint prefill of the new prompts costs)."""

WAIT_S = 0.25
"""A waiting caller re-checks its request (and its ``should_stop``) at least this often, seconds."""


_THREAD_FNS = None


def _thread_fns() -> list:
    """The C functions that set this thread's own intra-op thread count, found once: MKL's
    ``MKL_Set_Num_Threads_Local`` (exported by torch's CPU library; the lower-case ``mkl_set_num_threads_local`` that
    ctypes also finds there crashed the process when called) and OpenMP's ``omp_set_num_threads`` from the
    ``libgomp`` torch loads (it sets the calling thread's ``nthreads-var`` only). Entries are ``("mkl", set function)``
    and ``("omp", the libgomp library)``; the list is empty where neither is found."""
    global _THREAD_FNS
    if _THREAD_FNS is None:
        found = []
        try:
            import ctypes
            import glob
            import os

            import torch

            lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
            if torch.backends.mkl.is_available():
                cpu = ctypes.CDLL(os.path.join(lib_dir, "libtorch_cpu.so"))
                fn = cpu.MKL_Set_Num_Threads_Local
                fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                found.append(("mkl", fn))
            gomp = sorted(glob.glob(os.path.join(lib_dir, "libgomp*.so*")))
            if gomp:
                omp = ctypes.CDLL(gomp[0])
                omp.omp_set_num_threads.argtypes, omp.omp_set_num_threads.restype = [ctypes.c_int], None
                omp.omp_get_max_threads.argtypes, omp.omp_get_max_threads.restype = [], ctypes.c_int
                found.append(("omp", omp))
        except (OSError, AttributeError):
            pass
        _THREAD_FNS = found
    return _THREAD_FNS


@contextmanager
def _one_thread(on: bool):
    """Run the block on one intra-op thread (MKL and OpenMP, this thread only) when ``on`` and the calling thread
    is not the main one; otherwise leave the thread counts alone. A no-op where torch has neither MKL nor GNU OpenMP.

    Why, measured on this 2-core CPU (torch 2.13 CPU wheel: MKL 2024.2 and oneDNN over GNU OpenMP, 2 threads): an
    OpenMP team started by any thread but the main one runs 1.5-3x slower than the main thread's (an [8, 576] x
    [576, 1536] product: 0.30 ms from the main thread, 0.47-1.0 ms from another; oneDNN 0.18 against 0.32-0.52 ms).
    GNU OpenMP counts every team's threads, and once they outnumber the CPUs its idle threads stop spinning and
    sleep (libgomp ``gomp_throttled_spin_count_var``: 100 spins), so each of the hundreds of small parallel regions
    of a decoding step pays a futex wake-up. The main thread's first team does not count its own thread; any other
    thread's does, so on 2 CPUs a 2-thread team off the main thread is always throttled, and no environment
    variable lifts it. Every request of the studio (Gradio handlers, jobs, ``/v1``) runs in a worker thread, while
    a bare ``generate`` script, the baseline, runs in the main thread. A decoding step's products are small (memory
    bound), so one thread loses little: the default model's 8-row decoding step in a worker thread is 0.19 s with
    MKL alone on one thread (the rest on two) and 0.16-0.17 s with everything on one. Prefill (products with
    hundreds of rows) keeps both threads: with one it is 40 % slower; so do wide decoding steps
    (``ONE_THREAD_ROWS``)."""
    fns = _thread_fns() if on and threading.current_thread() is not threading.main_thread() else []
    if not fns:
        yield
        return
    import torch

    torch.get_num_threads()  # torch's lazy per-thread set-up runs now, not inside the block (it would undo ours)
    undo = []
    for kind, fn in fns:
        if kind == "mkl":
            old = fn(1)
            undo.append(lambda fn=fn, old=old: fn(old))
        else:
            old = fn.omp_get_max_threads()
            fn.omp_set_num_threads(1)
            undo.append(lambda fn=fn, old=old: fn.omp_set_num_threads(old))
    try:
        yield
    finally:
        for f in reversed(undo):
            f()


ONE_THREAD_ROWS = 16
"""Decoding steps of at most this many rows run on one intra-op thread off the main thread (``_one_thread``);
wider ones keep all threads. Measured in a worker thread (default model, 300 cached tokens, 2 CPU threads): 8 rows
0.14-0.16 s on one thread against 0.17-0.19 s on two; 32 rows 0.36-0.39 s against 0.22-0.26 s."""

GROW_TOKENS = 64
"""Columns a batch's key/value buffers grow by when full (``_GrowingLayer``): one copy every ``GROW_TOKENS``
decoding steps instead of one per step."""


def _growing_layer_class():
    """``_GrowingLayer``, made on first use (transformers is imported lazily)."""
    global _GrowingLayer
    if _GrowingLayer is None:
        from transformers.cache_utils import DynamicLayer

        class Growing(DynamicLayer):
            """A ``transformers.cache_utils.DynamicLayer`` whose keys/values live in buffers with spare columns:
            a decoding step writes its new column in place instead of concatenating (``DynamicLayer.update`` copies
            the whole ``[rows, heads, T, head_dim]`` cache twice per layer per step).

            Why, measured (default model, 8 rows, 300 cached tokens, 2 CPU threads): ``torch.cat`` in the cache took
            51 ms of a 192 ms decoding step (27 %), more at 32 rows and longer histories. ``keys``/``values`` stay
            what ``DynamicLayer`` exposes (views ``[rows, heads, T, head_dim]`` of the buffers), so everything that
            reads or replaces them (``batch_select_indices``, the engine's trimming and joining) works unchanged:
            when they no longer are the buffers' leading columns, the next update copies them into new buffers
            with ``GROW_TOKENS`` spare columns."""

            _kbuf = _vbuf = None

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized or self.keys.numel() == 0:
                    return super().update(key_states, value_states, *args, **kwargs)
                t, n = self.keys.shape[-2], key_states.shape[-2]
                kb, vb = self._kbuf, self._vbuf
                if not (kb is not None and t + n <= kb.shape[2] and self._owns(self.keys, kb)
                        and self._owns(self.values, vb)):
                    b, h, _, d = self.keys.shape
                    cap = t + n + GROW_TOKENS
                    kb = self.keys.new_empty((b, h, cap, d))
                    vb = self.values.new_empty((b, h, cap, self.values.shape[-1]))
                    kb[:, :, :t] = self.keys
                    vb[:, :, :t] = self.values
                    self._kbuf, self._vbuf = kb, vb
                kb[:, :, t:t + n] = key_states
                vb[:, :, t:t + n] = value_states
                self.keys, self.values = kb[:, :, :t + n], vb[:, :, :t + n]
                return self.keys, self.values

            def batch_select_indices(self, indices) -> None:  # the old buffers go now, not at the next update
                super().batch_select_indices(indices)
                self._kbuf = self._vbuf = None

            def crop(self, tokens_to_remove: int) -> None:  # later columns would be written over kept views
                super().crop(tokens_to_remove)
                self._kbuf = self._vbuf = None

            def reset(self) -> None:
                super().reset()
                self._kbuf = self._vbuf = None

            @staticmethod
            def _owns(x, buf) -> bool:  # x is buf's leading columns, all rows and heads
                return (x.data_ptr() == buf.data_ptr() and x.shape[:2] == buf.shape[:2]
                        and x.stride() == buf.stride())

        _GrowingLayer = Growing
    return _GrowingLayer


_GrowingLayer = None


MMAP_THRESHOLD_BYTES = 4 << 20
"""glibc ``malloc`` serves blocks of at least this many bytes with their own ``mmap`` (returned to the system when
freed), set once per process by the first engine of a CPU model (``_fixed_mmap_threshold``)."""

_MMAP_SET = False


def _fixed_mmap_threshold() -> None:
    """Fix glibc's ``M_MMAP_THRESHOLD`` at ``MMAP_THRESHOLD_BYTES`` (``mallopt``; a no-op off glibc).

    Why, measured: with key/value buffers that live across steps (``_GrowingLayer``), the 32-seed expansion grew
    to 24 GiB resident and was killed for memory, where its caches need a few GiB. By default glibc raises its
    mmap threshold to the size of any mmapped block freed (up to 32 MiB), so the per-layer buffers (up to ~25 MiB
    at 32 rows) then come from the heap arenas, and each thread that runs a step (whichever caller waits) has
    its own arena: freed buffers stay in the arena that made them, unusable by the others and not returned. With
    the threshold fixed at 4 MiB the same run peaked at 9.0 GiB and finished (23.1 tok/s)."""
    global _MMAP_SET
    if _MMAP_SET:
        return
    _MMAP_SET = True
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        if name:
            libc = ctypes.CDLL(name)
            if hasattr(libc, "mallopt"):
                libc.mallopt(-3, MMAP_THRESHOLD_BYTES)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


CPU_WEIGHTS = "fp16"
"""How the engine multiplies by a CPU float32 model's linear weights: ``"fp16"`` (the default: a float16 copy of
each weight, packed for fbgemm's fp16 GEMM, ``torch.ops.quantized.linear_dynamic_fp16``; activations and
accumulation stay float32) or ``"fp32"`` (the model's own weights). See ``pack_fp16``."""

FP16_MAX_PARAMS = 3_000_000_000
"""Models with more parameters than this are not given float16 copies (they would cost 2 bytes per parameter)."""

_PACKED = threading.local()  # .on: this thread's forward runs on the packed float16 weights
_PACKS: "weakref.WeakKeyDictionary" = None  # nn.Linear -> (its packed float16 weight, _weight_key when packed)


def _weight_key(w) -> tuple:
    """What must not change between packing a weight and using its packed copy: its memory, dtype, device and
    in-place version (-1 for inference tensors, which have none)."""
    try:
        version = w._version
    except RuntimeError:
        version = -1
    return (w.data_ptr(), w.dtype, w.device, version)


def _fp16_linear_class():
    """``torch.nn.Linear`` with a forward that uses the module's packed float16 weight (``_PACKS``) while the
    calling thread's ``_PACKED.on`` is set, and the float32 weight otherwise (so anything else that runs the model,
    in any thread, gets the model's own float32 result)."""
    global _Fp16Linear
    if _Fp16Linear is None:
        import torch

        class Fp16Linear(torch.nn.Linear):
            def forward(self, x):
                entry = _PACKS.get(self) if getattr(_PACKED, "on", False) else None
                w = self.weight
                if (entry is None or entry[1] != _weight_key(w)
                        or x.dtype != torch.float32 or x.device.type != "cpu"):
                    # another caller, a copy of the module (its packed weight is not copied), or a weight that
                    # changed since it was packed (moved, cast, loaded or merged into): the module's own weight
                    return super().forward(x)
                return torch.ops.quantized.linear_dynamic_fp16(x, entry[0])

        _Fp16Linear = Fp16Linear
    return _Fp16Linear


_Fp16Linear = None


def pack_fp16(model) -> int:
    """Give every plain float32 ``torch.nn.Linear`` of a CPU ``model`` a float16 copy of its weight packed for
    fbgemm (``torch.ops.quantized.linear_prepack_fp16``), used only by the engine's forwards (``_PACKED``); the
    model's parameters, its ``state_dict`` and every other caller are unchanged. Idempotent. Returns the bytes
    added (0 when nothing was packed: not on CPU, not float32, a peft model, over ``FP16_MAX_PARAMS``, or torch
    without fbgemm).

    Why, measured (default model SmolLM2-135M, 2 CPU threads, worker thread, 300 cached tokens): a decoding step of
    8 rows takes 0.16-0.17 s with the float32 weights (MKL ``sgemm``), 0.14 s with oneDNN-packed float32 weights
    and 0.10-0.11 s with fbgemm fp16; the 8-seed, 3-round expansion 25.9 → 30.8 → 39.7 tok/s. A decoding step reads
    every weight once for a handful of rows, so its products are bound by memory, and float16 halves the bytes.
    What it changes: the weights are rounded to float16 (10-bit mantissa; the default model's weights come from a
    4-bit GGUF), so logits move by at most 0.03 on the default model (0.02-0.03 over 120 positions; the arg-max
    the same at every one), and greedy replies can part from float32 ``generate`` after many tokens; the
    engine's ``cpu_weights="fp32"`` gives float32 token for token. Peft models are left alone (merging an
    adapter would leave a stale copy)."""
    global _PACKS
    import weakref

    import torch

    if _PACKS is None:
        _PACKS = weakref.WeakKeyDictionary()
    try:
        if (getattr(model, "peft_config", None) is not None or model.device.type != "cpu"
                or sum(p.numel() for p in model.parameters()) > FP16_MAX_PARAMS
                or not hasattr(torch.ops.quantized, "linear_prepack_fp16")):
            return 0
    except (AttributeError, RuntimeError):
        return 0
    cls = _fp16_linear_class()
    added = 0
    for mod in model.modules():
        if type(mod) not in (torch.nn.Linear, cls) or mod.weight.dtype != torch.float32 or mod in _PACKS:
            continue
        try:
            bias = None if mod.bias is None else mod.bias.detach()
            w = mod.weight
            _PACKS[mod] = (torch.ops.quantized.linear_prepack_fp16(w.detach(), bias), _weight_key(w))
        except RuntimeError:  # fbgemm unavailable on this CPU: stay float32
            return added
        mod.__class__ = cls
        added += mod.weight.numel() * 2
    return added


class EngineError(Exception):
    """A request failed inside the engine (the model's forward raised, or its tokens could not be processed).
    Only the requests involved fail; the others go on."""


@dataclass(eq=False)  # identity: requests are compared and hashed as objects
class Request:
    """One generation request in an ``Engine``.

    Attributes:
        prompt_ids: the prompt's token ids (already rendered with the entry's template).
        max_new_tokens, temperature, top_p, repetition_penalty, seed: as ``studio.registry.GenParams``
            (temperature 0: greedy).
        stops: stop strings; the text is cut before the earliest one.
        interactive: streamed to a person (goes before batch requests, may use ``INTERACTIVE_ROWS``).
        generated: token ids generated so far (EOS included when it ended the reply).
        text: the decoded reply so far (special tokens skipped), cut at a stop string.
        version: increases with every token (a waiter's way to see progress).
        done: finished; ``finish_reason`` is ``stop`` (EOS or a stop string), ``length`` (``max_new_tokens``),
            ``cancelled`` or ``error`` (``error`` holds the exception).
    """

    prompt_ids: list[int]
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stops: list[str] = field(default_factory=list)
    interactive: bool = False
    id: int = 0
    generated: list[int] = field(default_factory=list)
    text: str = ""
    version: int = 0
    done: bool = False
    finish_reason: str | None = None
    error: BaseException | None = None
    cancelled: bool = False
    joined_step: int | None = None
    """The engine step that made the request's first token (``Engine.steps`` numbering)."""
    finished_step: int | None = None
    """The engine step during or after which the request ended."""
    should_stop: Callable[[], bool] | None = None
    """Checked by the engine at every step: once true, the request is cancelled even when no one waits on it
    (a reader that went away without closing its stream)."""
    _gen: object = None

    @property
    def greedy(self) -> bool:
        return not self.temperature or self.temperature <= 0


@dataclass(eq=False)
class _Prefix:
    """A finished request's keys/values kept for reuse: ``tokens`` (numpy int64 ``[L]``: its prompt and reply but
    the last token, which never entered the cache), ``layers`` (per layer ``(keys, values)``, ``[1, heads, L,
    head_dim]``, own memory), ``nbytes``."""

    tokens: object
    layers: list
    nbytes: int


class Engine:
    """Schedules every generation request for one loaded local model (see the module docstring).

    Args:
        model: a transformers causal LM (or a peft model over one), in eval mode.
        tokenizer: its tokenizer (``pad_token_id`` set).
        max_rows, interactive_rows, prefill_tokens, prefix_cache_bytes: see ``MAX_ROWS``, ``INTERACTIVE_ROWS``,
            ``PREFILL_TOKENS``, ``PREFIX_CACHE_BYTES`` (0: no prefix cache).
        cpu_weights: ``"fp16"`` or ``"fp32"``, see ``CPU_WEIGHTS`` and ``pack_fp16``.
        name: the registry entry's name, for messages.

    Thread-safe: any number of threads submit and wait at once.
    """

    def __init__(self, model, tokenizer, *, max_rows: int = MAX_ROWS, interactive_rows: int = INTERACTIVE_ROWS,
                 prefill_tokens: int = PREFILL_TOKENS, prefix_cache_bytes: int = PREFIX_CACHE_BYTES,
                 cpu_weights: str = CPU_WEIGHTS, name: str = "model"):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_rows = int(max_rows)
        self.interactive_rows = int(interactive_rows)
        self.prefill_tokens = int(prefill_tokens)
        self.prefix_cache_bytes = int(prefix_cache_bytes)
        if cpu_weights not in ("fp16", "fp32"):
            raise ValueError(f"cpu_weights must be 'fp16' or 'fp32', not {cpu_weights!r}")
        try:
            if model.device.type == "cpu":
                _fixed_mmap_threshold()
        except AttributeError:
            pass
        self.packed_bytes = pack_fp16(model) if cpu_weights == "fp16" else 0
        """Bytes of float16 weight copies made for this engine's forwards (``pack_fp16``; 0: the model's own
        weights)."""
        self._fp16 = (cpu_weights == "fp16" and getattr(model, "peft_config", None) is None
                      and any(m in (_PACKS or {}) for m in model.modules()))
        self._prefixes: "OrderedDict[int, _Prefix]" = OrderedDict()  # least recently used first
        self._prefix_ids = itertools.count(1)
        cfg = getattr(model, "config", None)
        self._config = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
        gen_cfg = getattr(model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        self._cond = threading.Condition()
        self._step_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: list[Request] = []
        self._rows: list[Request] = []  # in the order of the batch's rows
        self._cache = None
        self._mask = None  # [rows, T] long
        self._pos = None  # [rows] position of each row's pending token
        self._next = None  # [rows] pending token (sampled, not yet in the cache)
        self._epoch = 0  # steps ended (woken waiters compare)
        self._joinable: bool | None = None
        self.steps = 0
        """Decoding steps run so far."""
        self.joined_mid_batch = 0
        """Requests that joined a batch that already had rows (the refill at work)."""
        self.generated_tokens = 0
        """Tokens generated so far, every request (finished, cancelled or failed) included."""
        self.prefilled_tokens = 0
        """Prompt tokens run through the model so far (without the tokens taken from the prefix cache)."""
        self.reused_tokens = 0
        """Prompt tokens taken from the prefix cache instead of being prefilled."""

    # ------------------------------------------------------------------ state
    @property
    def rows(self) -> int:
        """Sequences in the running batch now."""
        with self._cond:
            return len(self._rows)

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet in the batch."""
        with self._cond:
            return len(self._waiting)

    def idle(self) -> bool:
        """True when no request is running or waiting."""
        with self._cond:
            return not self._rows and not self._waiting

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``idle()``; returns it. Does not run steps itself."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._rows and not self._waiting, timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds, woken at each step's end, until ``predicate()`` (called under the
        engine's lock, so it may read requests' fields); returns its last value. Does not run steps itself."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    # ------------------------------------------------------------------ requests
    def submit(self, prompt_ids: list[int], *, max_new_tokens: int = 512, temperature: float = 0.0,
               top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
               stops: list[str] | None = None, interactive: bool = False,
               should_stop: Callable[[], bool] | None = None) -> Request:
        """Queue a request; it joins the batch at the next step. Returns the ``Request`` to wait on.

        Raises:
            ValueError: empty prompt, ``max_new_tokens`` < 1, a negative temperature, ``top_p`` outside (0, 1],
                or a repetition penalty <= 0 (nothing is queued).
        """
        if not prompt_ids:
            raise ValueError("the prompt is empty (no tokens)")
        if int(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if float(temperature) < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, not {temperature}")
        if not 0 < float(top_p) <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {top_p}")
        if float(repetition_penalty) <= 0:
            raise ValueError(f"repetition_penalty must be above 0, not {repetition_penalty}")
        req = Request(list(map(int, prompt_ids)), int(max_new_tokens), float(temperature), float(top_p),
                      float(repetition_penalty), seed, list(stops or []), bool(interactive), id=next(self._ids),
                      should_stop=should_stop)
        with self._cond:
            self._waiting.append(req)
            self._cond.notify_all()
        return req

    def cancel(self, req: Request) -> None:
        """End ``req``: a waiting request is removed at once; a running one is dropped from the batch at the end
        of the current step (within one decoding step; this call waits for that). No-op when already done."""
        with self._cond:
            if req.done:
                return
            req.cancelled = True
            if req in self._waiting:
                self._waiting.remove(req)
                self._finish(req, "cancelled")
                self._cond.notify_all()
                return
        with self._step_lock:  # at most one step's wait
            self._drop_cancelled()
            with self._cond:
                self._epoch += 1
                self._cond.notify_all()

    def cancel_all(self) -> None:
        """Cancel every waiting and running request (``Registry.close``)."""
        with self._cond:
            reqs = list(self._waiting) + list(self._rows)
        for r in reqs:
            self.cancel(r)

    def wait(self, req: Request, *, seen: int = -1, should_stop: Callable[[], bool] | None = None) -> None:
        """Return once ``req`` is done or its ``version`` exceeds ``seen`` (-1: wait until done). Runs steps for
        the whole batch while no other caller does. When ``should_stop()`` becomes true (checked at every step's
        end, and every ``WAIT_S``), ``req`` is cancelled."""
        while True:
            with self._cond:
                if req.done or (seen >= 0 and req.version > seen):
                    return
                epoch = self._epoch
            if should_stop is not None and should_stop():
                self.cancel(req)
                continue
            if self._step_lock.acquire(blocking=False):
                try:
                    self._step()
                finally:
                    self._step_lock.release()
                    with self._cond:
                        self._epoch += 1
                        self._cond.notify_all()
                continue
            with self._cond:
                if self._epoch == epoch and not req.done and not (seen >= 0 and req.version > seen):
                    self._cond.wait(WAIT_S)

    def wait_all(self, reqs: list[Request], should_stop: Callable[[], bool] | None = None) -> None:
        """Wait until every request of ``reqs`` is done (running steps as ``wait`` does); once ``should_stop()``
        is true they are all cancelled."""
        stopped = False

        def stop() -> bool:
            nonlocal stopped
            if not stopped and should_stop():
                stopped = True
                for o in reqs:
                    self.cancel(o)
            return False  # cancelled here already

        for r in reqs:
            self.wait(r, should_stop=stop if should_stop is not None else None)

    # ------------------------------------------------------------------ the step
    def _finish(self, req: Request, reason: str, error: BaseException | None = None) -> None:
        """Mark ``req`` done (caller holds ``_cond``)."""
        req.done = True
        req.finished_step = self.steps
        req.finish_reason = reason
        req.error = error
        req.version += 1

    def _is_joinable(self, cache) -> bool:
        if self._joinable is None:
            from transformers.cache_utils import DynamicLayer

            self._joinable = all(type(layer) in (DynamicLayer, _GrowingLayer) for layer in cache.layers)
        return self._joinable

    def _admit(self) -> list[Request]:
        """Take the waiting requests that join at this step (caller holds ``_cond``): interactive first, then
        in arrival order, within the row limits and the prefill budget."""
        if not self._waiting:
            return []
        if self._rows and self._joinable is False:
            return []
        order = sorted(self._waiting, key=lambda r: (not r.interactive, r.id))
        taken: list[Request] = []
        n = len(self._rows)
        longest = 0
        for r in order:
            cap = self.max_rows + (self.interactive_rows if r.interactive else 0)
            if n + len(taken) >= cap:
                continue
            new_longest = max(longest, len(r.prompt_ids))
            if taken and new_longest * (len(taken) + 1) > self.prefill_tokens:
                break
            taken.append(r)
            longest = new_longest
        for r in taken:
            self._waiting.remove(r)
        return taken

    def _drop_cancelled(self) -> None:
        """Drop rows whose request was cancelled or whose ``should_stop()`` is true (caller holds ``_step_lock``)."""
        for r in list(self._rows):
            try:
                if r.should_stop is not None and not r.cancelled and r.should_stop():
                    r.cancelled = True
            except Exception:  # noqa: BLE001 - a broken check stops its own request only
                r.cancelled = True
        with self._cond:
            gone = [i for i, r in enumerate(self._rows) if r.cancelled and not r.done]
            for i in gone:
                self._finish(self._rows[i], "cancelled")
            if gone:
                self._keep([i for i in range(len(self._rows)) if i not in set(gone)])
                self._cond.notify_all()

    def _keep(self, idx: list[int]) -> None:
        """Keep only rows ``idx`` of the batch, and trim columns that are padding in every row (caller holds
        ``_step_lock`` and ``_cond``)."""
        import torch

        if len(idx) == len(self._rows):
            return
        kept = set(idx)
        self._keep_prefixes([i for i in range(len(self._rows)) if i not in kept])
        self._rows = [self._rows[i] for i in idx]
        if not idx:
            self._cache = self._mask = self._pos = self._next = None
            return
        t = torch.tensor(idx, device=self._mask.device)
        self._mask, self._pos, self._next = self._mask[t], self._pos[t], self._next[t]
        first = int(self._mask.any(0).long().argmax())
        for layer in self._cache.layers:
            layer.batch_select_indices(t)
            if first:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        if first:
            self._mask = self._mask[:, first:]

    def _forward(self, input_ids, mask, pos, cache):
        import torch

        one = (input_ids.shape[1] == 1 and input_ids.shape[0] <= ONE_THREAD_ROWS
               and self.model.device.type == "cpu")
        _PACKED.on = self._fp16
        try:
            with torch.inference_mode(), _one_thread(one):
                out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, cache=cache,
                                 use_cache=True, logits_to_keep=1)
        finally:
            _PACKED.on = False
        return out.logits[:, -1, :].float()

    def _step(self) -> None:
        """One step for the whole batch: drop cancelled rows, decode one token for every row, prefill and join
        waiting requests, drop finished rows. Caller holds ``_step_lock``."""
        import torch

        self._drop_cancelled()
        with self._cond:
            joining = self._admit()
        self.steps += 1
        # 1. one decoding step for the rows already in the batch
        if self._rows:
            if self._joinable:
                grow = _growing_layer_class()
                for layer in self._cache.layers:
                    layer.__class__ = grow
            mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
            try:
                logits = self._forward(self._next[:, None], mask, self._pos[:, None], self._cache)
            except Exception as e:  # noqa: BLE001 - the batch cannot go on: its requests fail, the others wait
                with self._cond:
                    for r in self._rows:
                        self._finish(r, "error", EngineError(f"model '{self.name}' failed while generating: {e}"))
                    self._keep([])
            else:
                self._mask = mask
                self._pos = self._pos + 1
                self._next, apply = self._accept(self._rows, logits, "next")
                with self._cond:
                    apply()
                    self._keep([i for i, r in enumerate(self._rows) if not r.done])
        # 2. prefill the requests joining, then append them to the batch
        if joining:
            self._join(joining)
        with self._cond:
            self._keep([i for i, r in enumerate(self._rows) if not r.done])
            self._cond.notify_all()

    def _prefill(self, reqs: list[Request]):
        """Prefill ``reqs`` together, left-padded. Returns (cache, mask, last positions, logits of the last
        position)."""
        import torch
        from transformers import DynamicCache

        dev = self.model.device
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache(config=self._config)
        logits = self._forward(ids, mask, pos, cache)
        self.prefilled_tokens += sum(len(r.prompt_ids) for r in reqs)
        return cache, mask, pos[:, -1], logits

    # ------------------------------------------------------------------ the prefix cache
    def _prefix_on(self) -> bool:
        return self.prefix_cache_bytes > 0 and self._joinable is True

    def _keep_prefixes(self, dropped: list[int]) -> None:
        """Keep the keys/values of the batch rows ``dropped`` whose request ended normally (caller holds
        ``_step_lock``): cut out of the padded batch into their own memory, least recently used dropped beyond
        ``prefix_cache_bytes``; a kept sequence that the new one extends is dropped (the new one serves all its
        prompts)."""
        import numpy as np

        if not self._prefix_on():
            return
        for i in dropped:
            r = self._rows[i]
            if not r.done or r.finish_reason not in ("stop", "length"):
                continue
            n = int(self._mask[i].sum())
            tokens = np.asarray(r.prompt_ids + r.generated[:-1], dtype=np.int64)
            if n != len(tokens) or n < PREFIX_MIN_TOKENS:
                continue
            layers = [(layer.keys[i:i + 1, :, -n:].clone(), layer.values[i:i + 1, :, -n:].clone())
                      for layer in self._cache.layers]
            nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
            if nbytes > self.prefix_cache_bytes:
                continue
            for key, old in list(self._prefixes.items()):
                if len(old.tokens) <= n and np.array_equal(old.tokens, tokens[:len(old.tokens)]):
                    del self._prefixes[key]
            self._prefixes[next(self._prefix_ids)] = _Prefix(tokens, layers, nbytes)
            while sum(p.nbytes for p in self._prefixes.values()) > self.prefix_cache_bytes:
                self._prefixes.popitem(last=False)

    def _find_prefix(self, prompt_ids: list[int]) -> tuple[_Prefix, int] | None:
        """The kept sequence sharing the longest token prefix with ``prompt_ids`` and that length (at most all but
        the prompt's last token, which must run to give the first reply token), or None below
        ``PREFIX_MIN_TOKENS``."""
        import numpy as np

        if not self._prefixes or len(prompt_ids) <= PREFIX_MIN_TOKENS:
            return None
        ids = np.asarray(prompt_ids, dtype=np.int64)
        best, best_n = None, 0
        for key, p in self._prefixes.items():
            m = min(len(p.tokens), len(ids) - 1)
            diff = np.flatnonzero(p.tokens[:m] != ids[:m])
            n = int(diff[0]) if len(diff) else m
            if n > best_n:
                best, best_n = key, n
        if best is None or best_n < PREFIX_MIN_TOKENS:
            return None
        self._prefixes.move_to_end(best)
        return self._prefixes[best], best_n

    def _prefill_on(self, req: Request, prefix: _Prefix, n: int):
        """Prefill ``req`` on the first ``n`` kept tokens of ``prefix``: only ``prompt_ids[n:]`` runs. Returns as
        ``_prefill``."""
        import torch
        from transformers import DynamicCache

        dev = self.model.device
        cache = DynamicCache(ddp_cache_data=[(k[:, :, :n], v[:, :, :n]) for k, v in prefix.layers],
                             config=self._config)
        total = len(req.prompt_ids)
        ids = torch.tensor([req.prompt_ids[n:]], dtype=torch.long, device=dev)
        mask = torch.ones((1, total), dtype=torch.long, device=dev)
        pos = torch.arange(n, total, device=dev)[None]
        logits = self._forward(ids, mask, pos, cache)
        self.prefilled_tokens += total - n
        self.reused_tokens += n
        return cache, mask, pos[:, -1], logits

    def _join(self, reqs: list[Request]) -> None:
        """Prefill ``reqs`` and append them to the batch: those with a kept prefix (``_find_prefix``) each on its
        prefix, the others together."""
        plain = []
        for r in reqs:
            hit = self._find_prefix(r.prompt_ids) if self._prefix_on() else None
            if hit is None:
                plain.append(r)
            else:
                self._join_group([r], hit)
        if plain:
            self._join_group(plain, None)

    def _join_group(self, reqs: list[Request], hit: tuple[_Prefix, int] | None) -> None:
        import torch
        import torch.nn.functional as F

        try:
            cache, mask, last, logits = self._prefill(reqs) if hit is None else self._prefill_on(reqs[0], *hit)
        except Exception as e:  # noqa: BLE001
            if len(reqs) > 1:  # find the one(s) at fault: each alone
                for r in reqs:
                    self._join_group([r], None)
                return
            with self._cond:
                self._finish(reqs[0], "error", EngineError(f"model '{self.name}' failed on a prompt: {e}"))
            return
        self._is_joinable(cache)
        firsts, apply = self._accept(reqs, logits, "first")
        with self._cond:  # the first tokens become visible with their rows in the batch
            apply()
            live = [i for i, r in enumerate(reqs) if not r.done]
            if not live:
                return
            t = torch.tensor(live, device=mask.device)
            mask, last, firsts = mask[t], last[t], firsts[t]
            for layer in cache.layers:
                layer.batch_select_indices(t)
            new = [reqs[i] for i in live]
            if self._rows:
                self.joined_mid_batch += len(new)
                width = max(self._mask.shape[1], mask.shape[1])

                def pad(x, w):  # left-pad the sequence axis (-2 of keys/values, -1 of a mask) to w
                    if x.dim() == 2:
                        return F.pad(x, (w - x.shape[1], 0))
                    return F.pad(x, (0, 0, w - x.shape[2], 0))

                data = [(torch.cat([pad(a.keys, width), pad(b.keys, width)]),
                         torch.cat([pad(a.values, width), pad(b.values, width)]))
                        for a, b in zip(self._cache.layers, cache.layers)]
                self._cache = type(cache)(ddp_cache_data=data, config=self._config)
                self._mask = torch.cat([pad(self._mask, width), pad(mask, width)])
                self._pos = torch.cat([self._pos, last + 1])
                self._next = torch.cat([self._next, firsts])
            else:
                self._cache, self._mask, self._pos, self._next = cache, mask, last + 1, firsts
            self._rows.extend(new)

    def _accept(self, reqs: list[Request], logits, when: str):
        """Choose each row's next token from ``logits`` ``[rows, vocab]`` with its own parameters, append it to its
        request and check EOS, stop strings and ``max_new_tokens``. Returns the tokens ``[rows]`` and a function
        that applies them to the requests (to be called under ``_cond``). A row whose processing fails fails
        alone."""
        import torch
        from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                            TemperatureLogitsWarper, TopPLogitsWarper)

        toks = logits.argmax(-1)
        for i, r in enumerate(reqs):
            if r.greedy and r.repetition_penalty == 1.0:
                continue
            try:
                s = logits[i:i + 1]
                if r.repetition_penalty != 1.0:
                    seen = torch.tensor([r.prompt_ids + r.generated], device=s.device)
                    s = RepetitionPenaltyLogitsProcessor(r.repetition_penalty)(seen, s)
                if r.greedy:
                    toks[i] = s.argmax(-1)[0]
                    continue
                s = TemperatureLogitsWarper(r.temperature)(None, s)
                if r.top_p < 1.0:
                    s = TopPLogitsWarper(r.top_p)(None, s)
                if r._gen is None and r.seed is not None:
                    r._gen = torch.Generator(device=s.device).manual_seed(int(r.seed))
                toks[i] = torch.multinomial(torch.softmax(s, -1), 1, generator=r._gen)[0, 0]
            except Exception as e:  # noqa: BLE001
                with self._cond:
                    self._finish(r, "error", EngineError(f"sampling failed: {e}"))
        values = toks.tolist()
        texts = {}
        for r, tok in zip(reqs, values):
            if r.done:
                continue
            try:
                gen = r.generated + [tok]
                texts[r.id] = self.tokenizer.decode(gen, skip_special_tokens=True)
            except Exception as e:  # noqa: BLE001
                with self._cond:
                    self._finish(r, "error", EngineError(f"decoding failed: {e}"))

        def apply() -> None:  # under ``_cond``, so waiters see the token and the batch's state together
            for r, tok in zip(reqs, values):
                if r.done:
                    continue
                r.generated.append(tok)
                self.generated_tokens += 1
                text = texts[r.id]
                hits = [k for k in (text.find(s) for s in r.stops) if k >= 0]
                if hits:
                    text = text[:min(hits)]
                r.text = text
                r.version += 1
                if when == "first":
                    r.joined_step = self.steps
                if tok in self.eos_ids or hits:
                    self._finish(r, "stop")
                elif len(r.generated) >= r.max_new_tokens:
                    self._finish(r, "length")

        return toks, apply
