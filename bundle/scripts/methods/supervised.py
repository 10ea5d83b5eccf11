# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from torch import nn

from ..engine.method import SemiSupervisedMethod, StepOutput

__all__ = ["SupervisedMethod"]


class SupervisedMethod(SemiSupervisedMethod):
    """Labeled data only: the reference every semi-supervised method must beat.

    With a multimodal network that exposes ``forward_modalities`` (CMC, Semi-CML), every modality
    head is supervised (the same supervised term the semi-supervised methods use, so the comparison
    isolates what unlabeled data adds). Any other network is supervised on ``network(image)``.
    With 100% of the labels this is full supervision.

    Args:
        supervised_loss: ``loss(list_of_logits, label)``, e.g. ``MultiHeadSupervisedLoss``.
    """

    uses_unlabeled = False

    def __init__(self, supervised_loss: nn.Module) -> None:
        super().__init__()
        self.supervised_loss = supervised_loss

    def step(self, network, image, label, unlabeled, epoch) -> StepOutput:
        logits, _ = self.forward_heads(network, image)
        sup = self.supervised_loss(logits, label)
        return StepOutput(loss=sup, terms={"loss_sup": sup}, pred=self.mean_of_heads(network, logits))
