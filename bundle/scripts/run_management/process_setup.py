# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""What a training process sets before anything is built: torch's CPU threads and the random seeds."""

from __future__ import annotations

import torch
from monai.utils import set_determinism

__all__ = ["set_up_process"]


def set_up_process(seed: int, num_threads: int | str | None = None) -> None:
    """Seeds every generator (MONAI's ``set_determinism``: Python, NumPy, torch) and sets torch's intra-op
    CPU threads to ``num_threads`` (None or 0: torch's default, one per core; a command line gives text)."""
    if num_threads:
        threads = int(num_threads)
        if threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {num_threads!r}.")
        torch.set_num_threads(threads)
    set_determinism(seed=int(seed))
