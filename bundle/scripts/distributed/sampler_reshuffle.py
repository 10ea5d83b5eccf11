# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""A new ``DistributedSampler`` order at every pass of a trainer over its data loader."""

from __future__ import annotations

from ignite.engine import Engine, Events
from torch.utils.data import DistributedSampler

__all__ = ["ReshuffleDistributedSampler"]


class ReshuffleDistributedSampler:
    """Gives the trainer's ``DistributedSampler`` a new epoch each time the trainer restarts its loader.

    MONAI's workflows call ``sampler.set_epoch(epoch)`` when an epoch starts, but ignite keeps its
    data iterator across epochs when ``epoch_length`` is set, and restarts it (``iter(loader)``)
    whenever a pass over the loader ends, possibly several times per epoch. A ``DistributedSampler``
    yields the same order for the same epoch number, so every pass of an epoch would repeat one
    order and one split of the cases between the ranks. On ``DATALOADER_STOP_ITERATION`` (just
    before the restart) this handler sets the sampler's epoch to ``max_epochs + iteration``: a number
    that no other pass uses, that is the same on every rank (the ranks run the same iterations), and
    that does not depend on how often the process was restarted (resumed runs continue the sequence).

    The unlabeled loader needs no handler: ``SemiSupervisedTrainer`` numbers its passes itself.

    Args:
        sampler: the sampler of the trainer's (labeled) loader; any other sampler type is left alone.
    """

    def __init__(self, sampler: object) -> None:
        self.sampler = sampler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.DATALOADER_STOP_ITERATION, self)

    def __call__(self, engine: Engine) -> None:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(int(engine.state.max_epochs or 0) + int(engine.state.iteration))
