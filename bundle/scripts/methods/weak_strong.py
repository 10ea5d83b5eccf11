# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..engine.method import SemiSupervisedMethod, StepOutput
from ..networks.wrapped_network import unwrap_network
from .pseudo_labels import confident_pseudo_labels
from .strong_views import StrongView
from .teacher import ema_teacher, update_teacher

__all__ = ["WeakStrongConsistencyMethod"]


class WeakStrongConsistencyMethod(SemiSupervisedMethod):
    """
    Multimodal weak-to-strong consistency: pseudo-labels from all sequences, lightly augmented, teach
    strong views in which sequences are perturbed, shifted, dropped and CutMixed.

    One iteration, for a labeled batch ``(x, y)`` and an unlabeled batch ``u`` (the weak view: the
    data pipeline's light augmentation)::

        p      = softmax(teacher(u))                      # no gradient; teacher in eval mode
        y_u, c = argmax(p), max(p) >= threshold           # hard pseudo-label and confidence mask
        u_s, y_s, c_s = strong_view(u, y_u, c)            # for each of num_strong_views views
        L = L_sup(net(x), y) + w(epoch) * mean_views( L_u(net(u_s), y_s, c_s) [, L_u(net_fp(u), y_u, c)] )

    - ``L_sup``: the supervised loss of every head (``MultiHeadSupervisedLoss``), as for every method;
    - ``L_u``: ``ConfidenceMaskedPseudoLabelLoss`` (masked CE + Dice), averaged over the heads of a
      multimodal network (each head must reproduce the pseudo-label);
    - the teacher is the network itself (FixMatch, UniMatch), or its exponential moving average when
      ``ema_decay`` is set;
    - ``feature_dropout`` > 0 adds UniMatch's feature perturbation: the weak view is forwarded once
      more with channel dropout on the output of the submodule ``feature_module`` (for ``CMCNet``:
      ``"fusion"``, the fused bottleneck) and must also reproduce the pseudo-label.

    The strong-view machinery (:class:`scripts.methods.strong_views.StrongView`) is multimodal: the
    sequences are perturbed independently, some are zeroed (sequence dropout) and some are moved
    (misalignment), so the model also learns to segment with a sequence missing or shifted. It works
    with ``CMCNet``, ``DecoupledMultiModalNet`` and any single network that takes the sequences as
    input channels.

    References:
        Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
        NeurIPS 2020. Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
        Segmentation" (UniMatch), CVPR 2023.

    Args:
        supervised_loss: ``loss(list_of_logits, label)`` over the heads.
        pseudo_label_loss: ``loss(logits, pseudo_label, mask)``, e.g. ``ConfidenceMaskedPseudoLabelLoss``.
        strong_view: builds a strong view and moves the targets with it.
        unsupervised_schedule: schedule ``epoch -> weight`` of the unsupervised term (0 before its start:
            then unlabeled images are not forwarded).
        threshold: confidence threshold of the pseudo-labels, in [0, 1].
        num_strong_views: independent strong views per unlabeled batch (UniMatch uses 2).
        feature_dropout: channel-dropout probability of the feature-perturbed stream; 0 disables it.
        feature_module: name of the submodule (``network.get_submodule``) whose output is perturbed.
        ema_decay: ``None``: pseudo-labels from the trained network; a number in (0, 1): from an
            exponential moving average of its weights with this decay.
    """

    def __init__(
        self,
        supervised_loss: nn.Module,
        pseudo_label_loss: nn.Module,
        strong_view: StrongView,
        unsupervised_schedule: Callable[[float], float],
        threshold: float = 0.95,
        num_strong_views: int = 1,
        feature_dropout: float = 0.0,
        feature_module: str | None = None,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
        if int(num_strong_views) < 1:
            raise ValueError(f"num_strong_views must be >= 1, got {num_strong_views}.")
        if not 0.0 <= float(feature_dropout) < 1.0:
            raise ValueError(f"feature_dropout must be in [0, 1), got {feature_dropout}.")
        if feature_dropout > 0 and not feature_module:
            raise ValueError("feature_dropout > 0 needs feature_module, the submodule whose output is perturbed.")
        if ema_decay is not None and not 0.0 < float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay}.")
        self.supervised_loss = supervised_loss
        self.pseudo_label_loss = pseudo_label_loss
        self.strong_view = strong_view
        self.unsupervised_schedule = unsupervised_schedule
        self.threshold = float(threshold)
        self.num_strong_views = int(num_strong_views)
        self.feature_dropout = float(feature_dropout)
        self.feature_module = feature_module
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.teacher: AveragedModel | None = None

    def setup(self, network: nn.Module) -> None:
        if self.ema_decay is not None:
            # constant decay; buffers (e.g. BatchNorm statistics) averaged like the weights
            self.teacher = ema_teacher(network, self.ema_decay)
        if self.feature_dropout > 0:
            unwrap_network(network).get_submodule(self.feature_module)  # fails early on a wrong name

    def after_optimizer_step(self, network: nn.Module, epoch: float) -> None:
        if self.teacher is not None:
            update_teacher(self.teacher, network)

    @torch.no_grad()
    def pseudo_labels(self, network: nn.Module, unlabeled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard pseudo-labels and confidence mask, both (B, 1, *spatial), from the weak view."""
        teacher = self.teacher.module if self.teacher is not None else network
        heads = self.predict_heads(teacher, unlabeled)
        probs = torch.softmax(self.mean_of_heads(teacher, heads, unlabeled).float(), dim=1)
        return confident_pseudo_labels(probs, self.threshold)

    def _heads_loss(self, logits: list[torch.Tensor], pseudo_label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.pseudo_label_loss(x, pseudo_label, mask) for x in logits]).mean()

    def _feature_perturbed_heads(self, network: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
        module = unwrap_network(network).get_submodule(self.feature_module)
        p = self.feature_dropout

        def perturb(_module, _inputs, output):
            keep = torch.rand(output.shape[0], output.shape[1], *[1] * (output.ndim - 2), device=output.device) >= p
            return output * keep.to(output.dtype) / (1 - p)

        handle = module.register_forward_hook(perturb)
        try:
            logits, _ = self.forward_heads(network, image)
        finally:
            handle.remove()
        return logits

    def uses_unlabeled_at(self, epoch: float) -> bool:
        # before the schedule starts the unlabeled term has weight 0: no unlabeled batch is needed
        return float(self.unsupervised_schedule(epoch)) > 0.0

    def strong_views(self, network: nn.Module, unlabeled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """The weak view's pseudo-label and confidence mask, and ``num_strong_views`` strong views of
        ``unlabeled``, each ``(image, pseudo_label, mask)`` moved with it."""
        pseudo_label, mask = self.pseudo_labels(network, unlabeled)
        return (
            pseudo_label,
            mask,
            [self.strong_view(unlabeled, pseudo_label, mask) for _ in range(self.num_strong_views)],
        )

    def unlabeled_loss(
        self,
        network: nn.Module,
        unlabeled: torch.Tensor,
        pseudo_label: torch.Tensor,
        mask: torch.Tensor,
        views: list,
        strong_logits: list[torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The unweighted unsupervised term and its parts for logging, from the heads' logits on the
        strong views concatenated along the batch (``strong_logits``, one tensor per head)."""
        n = unlabeled.shape[0]
        unsup_terms = []
        for i, (_, view_label, view_mask) in enumerate(views):
            unsup_terms.append(self._heads_loss([x[i * n : (i + 1) * n] for x in strong_logits], view_label, view_mask))
        terms: dict[str, torch.Tensor | float] = {"loss_strong": torch.stack(unsup_terms).mean()}
        if self.feature_dropout > 0:
            fp = self._heads_loss(self._feature_perturbed_heads(network, unlabeled), pseudo_label, mask)
            unsup_terms.append(fp)
            terms["loss_feature_perturbed"] = fp
        unsup = torch.stack(unsup_terms).mean()
        terms.update(loss_unsup=unsup, stat_confident=mask.mean())
        return unsup, terms

    def step(self, network, image, label, unlabeled, epoch) -> StepOutput:
        weight = float(self.unsupervised_schedule(epoch)) if unlabeled is not None else 0.0
        if weight == 0.0:
            logits, _ = self.forward_heads(network, image)
            sup = self.supervised_loss(logits, label)
            return StepOutput(loss=sup, terms={"loss_sup": sup}, pred=self.mean_of_heads(network, logits))

        pseudo_label, mask, views = self.strong_views(network, unlabeled)
        strong = torch.cat([v[0] for v in views], dim=0)
        labeled_logits, strong_logits, _, _ = self.forward_joint(network, image, strong)
        sup = self.supervised_loss(labeled_logits, label)
        unsup, terms = self.unlabeled_loss(network, unlabeled, pseudo_label, mask, views, strong_logits)
        terms = {"loss_sup": sup, **terms, "weight_unsup": weight}
        return StepOutput(loss=sup + weight * unsup, terms=terms, pred=self.mean_of_heads(network, labeled_logits))
