"""GPU functions on Hugging Face ZeroGPU Spaces: one helper, ``gpu_function``, for every function that needs a GPU.

On a ZeroGPU Space the GPU is lent to one function call at a time: the function is decorated with
``spaces.GPU`` (the ``spaces`` package, which every Gradio Space has installed), runs in a worker process that
holds the GPU, and hands its result (or, for a generator, each item it yields) back to the caller. On other
Spaces ``spaces.GPU`` returns the function unchanged, and where ``spaces`` is not installed (a local install)
``gpu_function`` does the same itself.

The studio's GPU entry points are the local model generation of the registry (``Registry._local_batch``, replies
to several conversations, and ``Registry._local_stream``, a streamed reply); both queue their requests on the
model's ``studio.engine.Engine``, whose decoding steps run in the waiting caller's own call (the engine has no
thread of its own), so on ZeroGPU they run inside the GPU call. Models are
loaded, and moved to CUDA where it is available, outside them, as ZeroGPU expects.

Training runs are not wrapped: a run is its own long-lived process (``accelerate launch``), and ZeroGPU lends a
GPU only for the duration of one call in its worker process, so a run on a ZeroGPU Space trains on the CPU.
A Space with dedicated GPU hardware trains on its GPU as any machine does.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def spaces_module():
    """The ``spaces`` package when it can be imported (on Hugging Face Spaces), else None. Only a missing
    package counts as absent: an error raised while it imports (e.g. a misconfigured ZeroGPU Space) propagates."""
    try:
        return importlib.import_module("spaces")
    except ModuleNotFoundError as e:
        if e.name != "spaces":
            raise
        return None


def gpu_function(fn: F | None = None, *, duration: float | None = None):
    """Mark ``fn`` as needing a GPU: ``spaces.GPU(fn)`` when the ``spaces`` package imports, else ``fn`` itself.

    Usable as ``gpu_function(fn)``, ``@gpu_function`` or ``@gpu_function(duration=120)``. Plain functions and
    generator functions both work (``spaces.GPU`` streams a generator's items back); methods too, since the
    result is a plain function.

    Args:
        fn: the function (or generator function) to wrap.
        duration: the longest one call may hold the GPU, in seconds (ZeroGPU's own default, 60 s, when None).

    Returns:
        The wrapped function, or ``fn`` unchanged where ``spaces`` is absent (or where ``spaces.GPU`` itself
        returns it: every Space that is not ZeroGPU).
    """
    if fn is None:
        return lambda f: gpu_function(f, duration=duration)
    spaces = spaces_module()
    if spaces is None:
        return fn
    return spaces.GPU(fn, duration=duration) if duration is not None else spaces.GPU(fn)
