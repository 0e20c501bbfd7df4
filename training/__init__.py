"""The training program, run as its own process: ``accelerate launch -m training.train --run-dir RUN_DIR``.

- :mod:`training.train`: the program (Vicuna v1.1 recipe; LoRA, QLoRA, full; events, stop, resume), plus
  :data:`~training.train.DEFAULT_HYPERPARAMS`, :func:`~training.train.resolve_hyperparams` and
  :func:`~training.train.merge_adapter` for the studio.
- :mod:`training.data`: conversations to token ids and assistant-only labels, and the batch collators.
- ``training/configs/``: accelerate configs (single process, DDP, DeepSpeed ZeRO-2/3, FSDP).

Importing this package imports neither torch nor transformers.
"""
