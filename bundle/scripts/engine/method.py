# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""The contract between :class:`scripts.engine.SemiSupervisedTrainer` and a training method.

A method is a small strategy: given the network, one labeled batch and (optionally) one unlabeled
batch, it says what one iteration computes. The trainer owns everything else (device transfer,
optimisation, mixed precision, events, logging, checkpoints), so adding a method means writing one
subclass of :class:`SemiSupervisedMethod` plus one override config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..networks.modality_presence import modality_presence
from ..networks.multimodal import is_multimodal
from ..networks.wrapped_network import forward_modality_heads, has_modality_heads, unwrap_network

__all__ = ["StepOutput", "SemiSupervisedMethod"]


@dataclass
class StepOutput:
    """What a method returns for one iteration.

    Attributes:
        loss: the scalar to back-propagate.
        terms: named scalar terms for logging (each loss term and its current weight). They are
            detached by the trainer before logging.
        pred: logits of the labeled batch, (B, K, *spatial), used by training metrics and handlers.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor | float] = field(default_factory=dict)
    pred: torch.Tensor | None = None


class SemiSupervisedMethod(nn.Module):
    """Base class of the training strategies.

    Subclasses implement :meth:`step`; the other hooks (:meth:`setup`, :meth:`uses_unlabeled_at`,
    :meth:`after_optimizer_step`, :meth:`record_validation`) have working defaults. A method is an
    ``nn.Module`` so that any state it owns (an EMA teacher, a PReL teacher, stage counters kept as
    buffers) travels with ``state_dict`` and is saved and restored by MONAI's checkpoint handlers
    together with the network and the optimizer.

    Class attributes:
        uses_unlabeled: ``False`` for methods that ignore unlabeled data; the trainer then does not
            load unlabeled batches at all.
    """

    uses_unlabeled: bool = True

    def setup(self, network: nn.Module) -> None:
        """Called once by the trainer before the first iteration (create teachers here)."""

    def uses_unlabeled_at(self, epoch: float) -> bool:
        """Whether the iteration at (fractional) ``epoch`` needs an unlabeled batch; when not, the
        trainer neither loads nor transfers one and :meth:`step` receives ``None``. Methods whose
        unlabeled terms start later (e.g. CMC's ``semi_start_epoch``) override it."""
        return self.uses_unlabeled

    def step(
        self, network: nn.Module, image: torch.Tensor, label: torch.Tensor, unlabeled: torch.Tensor | None, epoch: float
    ) -> StepOutput:
        """Compute the losses of one iteration.

        Args:
            network: the trained network, in train mode.
            image: labeled images, (B, M, *spatial) with one channel per modality.
            label: labels, (B, 1, *spatial) on the common grid, or (B, M, *spatial) with one label
                per modality (misaligned or unpaired data).
            unlabeled: unlabeled images (B', M, *spatial), or ``None`` when there are none (then the
                method must fall back to its supervised terms).
            epoch: fractional epoch, ``(iteration - 1) / epoch_length``; loss-weight schedules use it.
        """
        raise NotImplementedError

    @staticmethod
    def forward_heads(network: nn.Module, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-modality logits and bottleneck features of a multimodal network
        (:class:`~scripts.networks.multimodal.MultimodalNetwork`), or ``[network(batch)]`` and no
        features for any other network.

        A network wrapped in ``DistributedDataParallel`` is called as ``network(batch, heads=True)``,
        through the wrapper, so that its gradients are synchronised (see
        :func:`scripts.networks.wrapped_network.forward_modality_heads`).
        """
        if has_modality_heads(network):
            return forward_modality_heads(network, batch)
        return [network(batch)], []

    def forward_joint(
        self, network: nn.Module, image: torch.Tensor, unlabeled: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, list[torch.Tensor], list[torch.Tensor] | None]:
        """Forward labeled and unlabeled images together (one pass when their shapes allow it, two
        otherwise).

        Returns:
            the labeled logits and the unlabeled logits of every head (``None`` without unlabeled
            images), then the features of every head over the labeled images and over the unlabeled
            images (``None`` without unlabeled images). Nothing is dropped when the two batches
            differ in spatial size.
        """
        if unlabeled is None:
            logits, features = self.forward_heads(network, image)
            return logits, None, features, None
        if unlabeled.shape[1:] == image.shape[1:]:
            logits, features = self.forward_heads(network, torch.cat([image, unlabeled], dim=0))
            n = image.shape[0]
            return (
                [x[:n] for x in logits],
                [x[n:] for x in logits],
                [f[:n] for f in features],
                [f[n:] for f in features],
            )
        labeled_logits, labeled_features = self.forward_heads(network, image)
        unlabeled_logits, unlabeled_features = self.forward_heads(network, unlabeled)
        return labeled_logits, unlabeled_logits, labeled_features, unlabeled_features

    @torch.no_grad()
    def predict_heads(self, network: nn.Module, batch: torch.Tensor) -> list[torch.Tensor]:
        """Every head's logits on ``batch`` with the network in eval mode and no gradient (targets:
        pseudo-labels, teacher predictions); the network's train/eval mode is restored afterwards."""
        was_training = network.training
        network.eval()
        try:
            logits, _ = self.forward_heads(network, batch)
        finally:
            network.train(was_training)
        return [x.detach() for x in logits]

    @staticmethod
    def mean_of_heads(
        network: nn.Module, logits: list[torch.Tensor], image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The network's prediction from its heads' logits (named apart from CMCNet's fusion layer,
        which fuses features, not predictions).

        For a multimodal network, its own ``average_heads`` (the contract of
        :class:`~scripts.networks.multimodal.MultimodalNetwork`: the mean over its available heads, per
        case over the sequences present in ``image``, as its ``forward`` predicts; without ``image``
        every sequence counts as present). For any other network, its single head.

        Args:
            network: the network (possibly wrapped) whose heads gave ``logits``.
            logits: the heads' logits, as :meth:`forward_heads` returns them.
            image: the input the heads read, ``(B, M, *spatial)``; None: every sequence present.
        """
        inner = unwrap_network(network)
        if not is_multimodal(inner):
            if len(logits) != 1:
                raise ValueError(f"{type(inner).__name__} is not multimodal but {len(logits)} heads were given.")
            return logits[0]
        return inner.average_heads(logits, None if image is None else modality_presence(image))

    def record_validation(self, epoch: int, per_modality_dice: Sequence[float], network: nn.Module) -> None:
        """Called by :class:`scripts.engine.modality_validation.ModalityValidationHandler` after every
        per-modality validation round, with the validation Dice of every modality network (modality
        order) and the trained network. No-op by default; Semi-CML keeps each modality's best
        snapshots here for its PReL teacher."""

    def after_optimizer_step(self, network: nn.Module, epoch: float) -> None:
        """Called after every optimizer step (update EMA teachers here)."""

    def extra_repr(self) -> str:
        return f"uses_unlabeled={self.uses_unlabeled}"
