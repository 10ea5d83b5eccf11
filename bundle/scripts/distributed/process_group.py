# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Joining the ``torch.distributed`` process group of a ``torchrun`` launch."""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from monai.utils import set_determinism
from torch import nn

__all__ = ["default_backend", "DistributedSetup"]

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def default_backend() -> str:
    """``"nccl"`` when CUDA GPUs are available, ``"gloo"`` (CPU) otherwise."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


class DistributedSetup:
    """This process's place in a distributed training run launched by ``torchrun``.

    Constructing it joins the process group described by the environment variables ``torchrun``
    sets (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``), unless a
    group is already initialised, and selects the device: GPU ``LOCAL_RANK`` when CUDA is available
    (made the current CUDA device), the CPU otherwise. The backend defaults to NCCL on GPUs and Gloo
    on the CPU. On ranks other than 0 it then silences ``INFO`` log records (warnings and errors
    still show), so that the console shows one copy of the training log.

    ``multi_gpu_train.yaml`` creates one as ``distributed``; the device, the handler filtering and the
    network wrapping all refer to it, so the group is joined before anything needs it, whatever the
    order of ``initialize`` and ``run``.

    Args:
        backend: ``"nccl"``, ``"gloo"``, or ``None`` for :func:`default_backend`.
        timeout_minutes: how long a collective waits for the other ranks before failing.
        quiet_other_ranks: silence ``INFO`` logs on ranks other than 0.
        seed: if not ``None``, reseed every random generator with ``seed + rank``
            (``monai.utils.set_determinism``), so that the processes draw different augmentations
            and noise. ``DistributedDataParallel`` starts every rank from rank 0's weights anyway.

    Raises:
        RuntimeError: when no process group is initialised and the launch variables are missing
            (the script was not started by ``torchrun``), or ``LOCAL_RANK`` names a missing GPU.
        ValueError: NCCL requested without CUDA.

    Example::

        setup = DistributedSetup()  # in a process started by torchrun
        net = torch.nn.parallel.DistributedDataParallel(setup.prepare_network(net), device_ids=setup.device_ids)
    """

    def __init__(
        self,
        backend: str | None = None,
        timeout_minutes: float = 30.0,
        quiet_other_ranks: bool = True,
        seed: int | None = None,
    ) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        if not initialised:
            missing = [name for name in _LAUNCH_VARIABLES if name not in os.environ]
            if missing:
                raise RuntimeError(
                    f"distributed training needs the process-group variables {', '.join(missing)}: launch it with "
                    "`torchrun --nproc_per_node=<N> -m monai.bundle run --config_file ...` (see README.md)."
                )
        self.backend = str(backend or (dist.get_backend() if initialised else default_backend()))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if torch.cuda.is_available():
            if self.local_rank >= torch.cuda.device_count():
                raise RuntimeError(
                    f"LOCAL_RANK {self.local_rank} but only {torch.cuda.device_count()} GPU(s) visible: "
                    "use at most one process per GPU (--nproc_per_node)."
                )
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            if self.backend == "nccl":
                raise ValueError("the NCCL backend needs CUDA GPUs; use backend 'gloo' on the CPU.")
            self.device = torch.device("cpu")
        self.owns_process_group = not initialised
        if not initialised:
            dist.init_process_group(backend=self.backend, timeout=timedelta(minutes=float(timeout_minutes)))
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        logging.getLogger("DistributedSetup").info(
            f"rank {self.rank} of {self.world_size} (local rank {self.local_rank} of {self.local_world_size}), "
            f"backend {self.backend}, device {self.device}"
        )
        if seed is not None:
            set_determinism(seed=int(seed) + self.rank)
        self._quieted = bool(quiet_other_ranks) and self.rank != 0
        if self._quieted:
            logging.disable(logging.INFO)

    @property
    def is_main_process(self) -> bool:
        """Whether this is rank 0, the rank that writes logs, checkpoints and metrics."""
        return self.rank == 0

    @property
    def device_ids(self) -> list[int] | None:
        """``device_ids`` for ``DistributedDataParallel``: this process's GPU, or ``None`` on the CPU."""
        return [self.device.index] if self.device.type == "cuda" else None

    def prepare_network(self, network: nn.Module, sync_batchnorm: bool = True) -> nn.Module:
        """Move ``network`` to this process's device, first converting its BatchNorm layers to
        ``SyncBatchNorm`` (statistics over the whole distributed batch) when ``sync_batchnorm`` is True
        and the device is a GPU (``SyncBatchNorm`` has no CPU implementation). Networks without
        BatchNorm are unchanged."""
        if sync_batchnorm and self.device.type == "cuda":
            network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        return network.to(self.device)

    def barrier(self) -> None:
        """Wait until every rank reaches this point."""
        if dist.is_initialized():
            dist.barrier()

    def destroy(self) -> None:
        """Leave the process group (when this object joined it) and restore the logging level."""
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        if self._quieted:
            logging.disable(logging.NOTSET)
            self._quieted = False

    def __repr__(self) -> str:
        return (
            f"DistributedSetup(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
            f"backend={self.backend!r}, device={self.device})"
        )
