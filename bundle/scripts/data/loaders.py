# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
The training loaders of ``train.yaml``: the labeled one and the optional unlabeled one.

One component instead of config expressions, because the same rules hold for both loaders and for
``multi_gpu_train.yaml``: a loader drops its last incomplete batch only when it has at least one full
batch (a tiny labeled set still trains); its workers stay alive between passes (ignite restarts the
loader at every pass); with ``distributed`` each process reads its own share through a
``DistributedSampler``; and an empty dataset (no unlabeled cases) gives no loader at all, so that the
trainer and every method fall back to their supervised terms.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.bundle import ComponentLocator
from monai.data import DataLoader, DistributedSampler
from torch.utils.data import Dataset

__all__ = ["loader_workers", "training_loader"]


def _loader_class(loader: Any) -> type:
    if not isinstance(loader, str):
        return loader
    located = ComponentLocator().get_component_module_name(loader)  # MONAI's short names, e.g. ThreadDataLoader
    module = located[0] if isinstance(located, list) else located
    if module is None:
        from pydoc import locate

        found = locate(loader)
        if found is None:
            raise ValueError(f"loader {loader!r} is neither a MONAI component nor an importable class.")
        return found
    return getattr(__import__(module, fromlist=[loader]), loader)


def loader_workers(processes_per_node: int = 1) -> int:
    """Data-loading worker processes per training process: on a GPU machine a share of the cores (at most 4;
    ``processes_per_node`` processes share them), so that augmentation overlaps with the GPU; none on the
    CPU, where workers would compete with training for the same cores."""
    if not torch.cuda.is_available():
        return 0
    return min(4, (os.cpu_count() or 1) // (2 * max(1, int(processes_per_node))))


def training_loader(
    dataset: Dataset | None,
    batch_size: int,
    num_workers: int = 0,
    distributed: bool = False,
    shuffle: bool = True,
    loader: type | str = DataLoader,
    **kwargs: Any,
) -> DataLoader | None:
    """A shuffled training loader over ``dataset``, or None when it has no case.

    Args:
        dataset: the cases (a MONAI ``CacheDataset``); None or empty: no loader.
        batch_size: cases per batch (per process when distributed).
        num_workers: loader workers; they persist between passes when there are any.
        distributed: read through a ``DistributedSampler`` (one share per process, padded to equal shares);
            the sampler is the loader's ``sampler`` (the trainer and ``ReshuffleDistributedSampler`` set its
            epoch).
        shuffle: shuffle the cases (the sampler's, when distributed).
        loader: the loader class, or its name (``"ThreadDataLoader"``, a dotted path).
        kwargs: further arguments of the loader class.
    """
    if dataset is None or len(dataset) == 0:
        return None
    sampler = DistributedSampler(dataset, shuffle=shuffle, even_divisible=True) if distributed else None
    cases = len(sampler) if sampler is not None else len(dataset)
    return _loader_class(loader)(
        dataset,
        batch_size=int(batch_size),
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=cases >= int(batch_size),
        num_workers=int(num_workers),
        persistent_workers=int(num_workers) > 0,
        **kwargs,
    )
