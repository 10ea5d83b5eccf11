# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Semi-CML: contrastive mutual learning, then pseudo-label re-learning (PReL).

Zhang et al., "Multi-modal contrastive mutual learning and pseudo-label re-learning for
semi-supervised medical image segmentation", Medical Image Analysis 83 (2023) 102656.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..data.missing_modalities import complete_cases, modality_presence
from ..engine.method import SemiSupervisedMethod, StepOutput
from ..engine.module_broadcast import broadcast_module_state, broadcast_object, is_distributed
from ..losses.multi_head import MultiHeadSupervisedLoss
from ..networks.multimodal import MultimodalNetwork, PerModalityNetworks, require_multimodal
from ..networks.wrapped_network import unwrap_network
from .teacher import frozen_copy

__all__ = ["SemiCMLMethod", "average_state_dicts", "strongest_modality", "stochastic_pseudo_labels"]

logger = logging.getLogger(__name__)

MUTUAL = "mutual"
PREL = "prel"


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several state dicts of the same architecture (weight averaging).

    Floating-point entries are averaged (in float64, then cast back to their dtype); other entries
    (e.g. BatchNorm's integer ``num_batches_tracked``) are copied from the first state dict.

    Args:
        state_dicts: ``K >= 1`` state dicts with the same keys and shapes.

    Returns:
        a new state dict (tensors on the device of the first state dict's tensors).

    Raises:
        ValueError: when the list is empty or the keys or shapes differ.
    """
    if len(state_dicts) == 0:
        raise ValueError("average_state_dicts needs at least one state dict.")
    keys = list(state_dicts[0].keys())
    for sd in state_dicts[1:]:
        if list(sd.keys()) != keys:
            raise ValueError("all state dicts must have the same keys.")
    averaged: dict[str, torch.Tensor] = {}
    for key in keys:
        first = state_dicts[0][key]
        values = [sd[key] for sd in state_dicts]
        if any(v.shape != first.shape for v in values):
            raise ValueError(f"entry {key!r} has different shapes across the state dicts.")
        if torch.is_floating_point(first):
            stacked = torch.stack([v.detach().to(device=first.device, dtype=torch.float64) for v in values])
            averaged[key] = stacked.mean(dim=0).to(first.dtype)
        else:
            averaged[key] = first.detach().clone()
    return averaged


def strongest_modality(scores: Sequence[float]) -> int:
    """Index of the modality with the highest validation score (e.g. Dice).

    Ties go to the lowest index; NaN scores (no valid measurement) never win unless every score is
    NaN, in which case modality 0 is returned.

    Example::

        strongest_modality([0.6, 0.8, 0.7])  # 1
    """
    if len(scores) == 0:
        raise ValueError("strongest_modality needs at least one score.")
    best, best_score = 0, -math.inf
    for m, score in enumerate(scores):
        score = float(score)
        if not math.isnan(score) and score > best_score:
            best, best_score = m, score
    return best


@torch.no_grad()
def stochastic_pseudo_labels(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    passes: int,
    noise_std: float,
    noise_clip: Sequence[float] | None = None,
) -> torch.Tensor:
    """Soft pseudo-labels of PReL: the mean class probabilities of ``passes`` stochastic teacher passes.

    Pass ``t`` computes ``softmax(teacher(image + noise_t))`` with ``noise_t ~ N(0, noise_std^2)``
    drawn independently per voxel, clamped to ``[low, high]`` when ``noise_clip = (low, high)``
    (the Semi-CML authors' code clamps it); the teacher's own stochasticity (dropout left on by the
    caller) adds to it. Computed without gradients.

    Args:
        teacher: a segmentation network, ``(B, C, *spatial) -> (B, K, *spatial)`` logits.
        image: the teacher's input, ``(B, C, *spatial)``.
        passes: number of passes ``T >= 1``.
        noise_std: standard deviation of the Gaussian input noise, ``>= 0`` (0: no noise).
        noise_clip: ``(low, high)`` bounds of the noise, ``low <= high``, or ``None`` (default: not
            clamped).

    Returns:
        float32 probabilities ``(B, K, *spatial)``: in [0, 1] and summing to 1 over ``K``.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}.")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
    if noise_clip is not None and (len(noise_clip) != 2 or not float(noise_clip[0]) <= float(noise_clip[1])):
        raise ValueError(f"noise_clip must be (low, high) with low <= high, got {noise_clip}.")
    total: torch.Tensor | None = None
    for _ in range(passes):
        noisy = image
        if noise_std > 0:
            noise = noise_std * torch.randn_like(image)
            if noise_clip is not None:
                noise = noise.clamp(float(noise_clip[0]), float(noise_clip[1]))
            noisy = image + noise
        probabilities = torch.softmax(teacher(noisy).float(), dim=1)
        total = probabilities if total is None else total + probabilities
    assert total is not None
    return total / passes


def _has_dropout(module: nn.Module) -> bool:
    """Whether the module contains a dropout layer with a positive probability."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules())


class SemiCMLMethod(SemiSupervisedMethod):
    """Semi-CML: multi-modal contrastive mutual learning, then pseudo-label re-learning (PReL).

    Zhang et al., "Multi-modal contrastive mutual learning and pseudo-label re-learning for
    semi-supervised medical image segmentation", Medical Image Analysis 83 (2023) 102656.

    The network has one independent network per modality (``DecoupledMultiModalNet``). With
    ``p_m = softmax(logits_m)`` of modality ``m`` on the unlabeled batch:

    - **mutual** stage, fractional epochs ``[0, mutual_epochs)``::

        L = L_sup + w_asc(epoch) * ASC(p_1..p_M) + w_mse(epoch) * MSE(p_1..p_M)

      ``L_sup``: supervised loss of every modality network on the labeled batch; ``ASC``:
      area-similarity contrast (a map's positive is the same case from another modality, its
      negatives every other case of the batch, similarity = soft Dice, NT-Xent); ``MSE``: mutual
      consistency between the modalities' probability maps.

    - **prel** stage, from ``mutual_epochs`` on: the teacher is the weight average of the strongest
      modality's ``teacher_checkpoints`` best validation snapshots (chosen by validation Dice, see
      :meth:`record_validation`). Its soft pseudo-label is the mean of ``prel_passes`` stochastic
      passes (dropout on, Gaussian input noise) on the unlabeled batch, without gradients. Every
      modality network re-learns from it::

        L = L_sup + prel_weight * mean_m L_soft(logits_m, pseudo) + prel_alpha * ASC(p_1..p_M)

      with ``L_soft`` Dice + CE against the soft target (``SoftDiceCELoss``). With
      ``prel_convex=True`` the two terms take the paper's convex form instead::

        L = L_sup + prel_weight * (prel_alpha * ASC(p_1..p_M) + (1 - prel_alpha) * mean_m L_soft(logits_m, pseudo))

      (``prel_alpha`` in [0, 1]; ``prel_weight`` 1 gives the paper's objective).

    The teacher is built at the first iteration of the prel stage and then stays fixed (under
    ``torch.distributed``, every rank then takes rank 0's teacher and modality choice). Snapshots
    are only recorded during the mutual stage. Without unlabeled data both stages train the
    supervised term only.

    The teacher is created in :meth:`setup` (a copy of modality 0's network, frozen), so that it is
    part of the method's ``state_dict`` from the start; the stage, the chosen modality and the
    per-modality top-K snapshots with their scores and epochs are the module's extra state. The
    training-state checkpoint therefore resumes either stage exactly. To load a checkpoint into a
    fresh method, call :meth:`setup` with the network first.

    Validation reaches the method through ``scripts.engine.ModalityValidationHandler``, which calls
    :meth:`record_validation` every few epochs. If no validation has been recorded when the prel
    stage starts, the teacher is modality 0's current network and a warning is logged.

    Args:
        supervised_loss: ``loss(list_of_logits, label)`` over the modality networks, e.g.
            ``MultiHeadSupervisedLoss``.
        asc_loss: area-similarity contrastive loss over the list of probability maps
            (``AreaSimilarityContrastiveLoss``).
        mutual_loss: consistency loss over the list of probability maps (``MutualConsistencyLoss``).
        pseudo_label_loss: ``loss(logits, soft_target)`` of the prel stage (``SoftDiceCELoss``).
        asc_schedule: schedule ``epoch -> weight`` of ASC in the mutual stage (the bundle: a sigmoid
            ramp-up to 0.1; the paper: 3.5, fixed, ``ConstantWeight``).
        mse_schedule: schedule ``epoch -> weight`` of the mutual consistency (sigmoid ramp-up).
        mutual_epochs: length of the mutual stage in epochs, >= 0.
        prel_passes: number ``T`` of stochastic teacher passes averaged into a pseudo-label, >= 1.
        prel_noise_std: standard deviation of the teacher's Gaussian input noise, >= 0.
        prel_alpha: weight of ASC in the prel stage, >= 0 (in [0, 1] with ``prel_convex``).
        prel_weight: weight of the pseudo-label re-learning term, >= 0 (of the convex combination
            with ``prel_convex``).
        prel_convex: use the convex form ``alpha * ASC + (1 - alpha) * L_soft`` of the paper
            (default False: the two independent weights above).
        prel_noise_clip: ``(low, high)`` bounds of the teacher's input noise, or ``None``
            (default: not clamped).
        teacher_checkpoints: number ``K`` of best validation snapshots kept per modality and
            averaged into the teacher, >= 1.
    """

    def __init__(
        self,
        supervised_loss: nn.Module,
        asc_loss: nn.Module,
        mutual_loss: nn.Module,
        pseudo_label_loss: nn.Module,
        asc_schedule: Callable[[float], float],
        mse_schedule: Callable[[float], float],
        mutual_epochs: float,
        prel_passes: int = 4,
        prel_noise_std: float = 0.1,
        prel_alpha: float = 0.1,
        prel_weight: float = 1.0,
        teacher_checkpoints: int = 3,
        prel_convex: bool = False,
        prel_noise_clip: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not mutual_epochs >= 0:
            raise ValueError(f"mutual_epochs must be >= 0, got {mutual_epochs}.")
        if int(prel_passes) != prel_passes or prel_passes < 1:
            raise ValueError(f"prel_passes must be an integer >= 1, got {prel_passes}.")
        if not prel_noise_std >= 0:
            raise ValueError(f"prel_noise_std must be >= 0, got {prel_noise_std}.")
        if not prel_alpha >= 0 or not prel_weight >= 0:
            raise ValueError(f"prel_alpha and prel_weight must be >= 0, got {prel_alpha} and {prel_weight}.")
        if prel_convex and not prel_alpha <= 1:
            raise ValueError(f"prel_alpha must be in [0, 1] with prel_convex, got {prel_alpha}.")
        if prel_noise_clip is not None and (
            len(prel_noise_clip) != 2 or not float(prel_noise_clip[0]) <= float(prel_noise_clip[1])
        ):
            raise ValueError(f"prel_noise_clip must be (low, high) with low <= high, got {prel_noise_clip}.")
        if int(teacher_checkpoints) != teacher_checkpoints or teacher_checkpoints < 1:
            raise ValueError(f"teacher_checkpoints must be an integer >= 1, got {teacher_checkpoints}.")
        self.supervised_loss = supervised_loss
        self.asc_loss = asc_loss
        self.mutual_loss = mutual_loss
        self.pseudo_label_loss = pseudo_label_loss
        self.asc_schedule = asc_schedule
        self.mse_schedule = mse_schedule
        self.mutual_epochs = float(mutual_epochs)
        self.prel_passes = int(prel_passes)
        self.prel_noise_std = float(prel_noise_std)
        self.prel_alpha = float(prel_alpha)
        self.prel_weight = float(prel_weight)
        self.teacher_checkpoints = int(teacher_checkpoints)
        self.prel_convex = bool(prel_convex)
        self.prel_noise_clip = (
            None if prel_noise_clip is None else (float(prel_noise_clip[0]), float(prel_noise_clip[1]))
        )
        self.register_module("teacher", None)
        self.num_modalities = 0
        self.stage = MUTUAL
        self.teacher_modality = -1
        # per modality: up to K entries {"epoch", "score", "state"}, best score first
        self.snapshots: list[list[dict[str, Any]]] = []

    # ------------------------------------------------------------------ set-up and state
    def setup(self, network: nn.Module) -> None:
        """Check the network and create the (frozen) teacher as a copy of modality 0's network."""
        network = unwrap_network(network)
        # heads (mutual learning) and one independent network per modality (PReL teacher)
        require_multimodal(network, "SemiCMLMethod", PerModalityNetworks)
        require_multimodal(network, "SemiCMLMethod", MultimodalNetwork)
        if network.num_modalities < 2:
            raise ValueError(f"Semi-CML needs at least 2 modalities, got {network.num_modalities}.")
        if self.num_modalities and self.num_modalities != network.num_modalities:
            raise ValueError(
                f"the method holds {self.num_modalities} modalities, the network has {network.num_modalities}."
            )
        self.num_modalities = int(network.num_modalities)
        if len(self.snapshots) != self.num_modalities:
            self.snapshots = [[] for _ in range(self.num_modalities)]
        if self.teacher is None:
            # a plain frozen module, not the EMA teacher of scripts.methods.teacher: PReL's teacher does not
            # follow the student, it is loaded once (build_teacher) with the average of the strongest
            # modality's best snapshots; its state_dict keys are the modality network's (``teacher.<name>``)
            self.teacher = frozen_copy(network.modality_network(0))

    def get_extra_state(self) -> dict[str, Any]:
        """Stage, chosen modality and snapshots (plain containers and tensors: ``weights_only`` loadable)."""
        return {
            "stage": self.stage,
            "teacher_modality": self.teacher_modality,
            "snapshots": [
                [{"epoch": s["epoch"], "score": s["score"], "state": dict(s["state"])} for s in modality]
                for modality in self.snapshots
            ],
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state["stage"] not in (MUTUAL, PREL):
            raise ValueError(f"unknown Semi-CML stage {state['stage']!r}.")
        if self.num_modalities and len(state["snapshots"]) not in (0, self.num_modalities):
            raise ValueError(
                f"the checkpoint holds snapshots of {len(state['snapshots'])} modalities, "
                f"the network has {self.num_modalities}."
            )
        self.stage = state["stage"]
        self.teacher_modality = int(state["teacher_modality"])
        self.snapshots = [
            [
                {
                    "epoch": int(s["epoch"]),
                    "score": float(s["score"]),
                    "state": {k: v.cpu() for k, v in s["state"].items()},
                }
                for s in modality
            ]
            for modality in state["snapshots"]
        ]
        if self.snapshots:
            self.num_modalities = len(self.snapshots)

    # ------------------------------------------------------------------ validation and teacher
    def record_validation(self, epoch: int, per_modality_dice: Sequence[float], network: nn.Module) -> None:
        """Keep each modality network's weights if they are among its ``K`` best validation scores.

        Called by ``ModalityValidationHandler``. Only the mutual stage records snapshots (the prel
        teacher is fixed once built). A NaN score is ignored. Among equal scores the earlier
        snapshot is kept. Snapshots are state-dict copies on the CPU.

        Args:
            epoch: the (1-based) epoch just completed.
            per_modality_dice: validation Dice of every modality network, in modality order.
            network: the trained multimodal network.
        """
        network = unwrap_network(network)
        if len(per_modality_dice) != self.num_modalities:
            raise ValueError(f"expected {self.num_modalities} per-modality scores, got {len(per_modality_dice)}.")
        if self.stage != MUTUAL:
            return
        for m, score in enumerate(per_modality_dice):
            score = float(score)
            kept = self.snapshots[m]
            if math.isnan(score) or (len(kept) >= self.teacher_checkpoints and score <= kept[-1]["score"]):
                continue
            state = {k: v.detach().cpu().clone() for k, v in network.modality_network(m).state_dict().items()}
            position = next((i for i, s in enumerate(kept) if score > s["score"]), len(kept))
            kept.insert(position, {"epoch": int(epoch), "score": score, "state": state})
            del kept[self.teacher_checkpoints :]

    def best_scores(self) -> list[float]:
        """The best recorded validation score of every modality (NaN where none was recorded)."""
        return [kept[0]["score"] if kept else math.nan for kept in self.snapshots]

    def build_teacher(self, network: nn.Module) -> None:
        """Start the prel stage: average the strongest modality's top-K snapshots into the teacher."""
        network = unwrap_network(network)
        if self.teacher is None:
            self.setup(network)
        assert self.teacher is not None
        scores = self.best_scores()
        if all(math.isnan(s) for s in scores):
            self.teacher_modality = 0
            state = {k: v.detach().clone() for k, v in network.modality_network(0).state_dict().items()}
            logger.warning(
                "Semi-CML: no per-modality validation was recorded before the PReL stage (is "
                "ModalityValidationHandler attached, with an interval that fits in mutual_epochs?); "
                "the teacher is modality 0's current network."
            )
        else:
            self.teacher_modality = strongest_modality(scores)
            kept = self.snapshots[self.teacher_modality]
            state = average_state_dicts([s["state"] for s in kept])
            logger.info(
                f"Semi-CML: PReL teacher = average of modality {self.teacher_modality}'s {len(kept)} best "
                f"checkpoints (epochs {[s['epoch'] for s in kept]}, Dice {[round(s['score'], 4) for s in kept]}); "
                f"best Dice per modality {[round(s, 4) for s in scores]}."
            )
        self.teacher.load_state_dict(state)
        if is_distributed():
            # every rank normally makes the same choice (identical weights, validation metrics
            # gathered over all ranks); rank 0's teacher is imposed anyway, so that the ranks can
            # never train against different teachers
            self.teacher_modality = int(broadcast_object(self.teacher_modality))
            broadcast_module_state(self.teacher)
        self.stage = PREL
        if self.prel_passes > 1 and self.prel_noise_std == 0 and not _has_dropout(self.teacher):
            logger.warning("Semi-CML: the teacher has no dropout and prel_noise_std is 0; its passes are identical.")

    def pseudo_labels(self, unlabeled: torch.Tensor) -> torch.Tensor:
        """Soft pseudo-labels of the unlabeled batch ``(B, M, *spatial)`` from the teacher's modality.

        The teacher runs in eval mode with its dropout layers in train mode (Monte-Carlo dropout),
        so that normalisation layers with running statistics are not disturbed.
        """
        if self.teacher is None or self.teacher_modality < 0:
            raise RuntimeError("the PReL teacher is not built yet; call build_teacher first.")
        self.teacher.eval()
        for module in self.teacher.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.train()
        m = self.teacher_modality
        return stochastic_pseudo_labels(
            self.teacher, unlabeled[:, m : m + 1], self.prel_passes, self.prel_noise_std, self.prel_noise_clip
        )

    # ------------------------------------------------------------------ training step
    def step(self, network, image, label, unlabeled, epoch) -> StepOutput:
        if epoch >= self.mutual_epochs and self.stage == MUTUAL:
            self.build_teacher(network)
        labeled_logits, unlabeled_logits, _, _ = self.forward_joint(network, image, unlabeled)
        # each modality network learns from the labeled cases that have its sequence (missing sequences)
        if isinstance(self.supervised_loss, MultiHeadSupervisedLoss):
            sup = self.supervised_loss(labeled_logits, label, present=modality_presence(image))
        else:
            sup = self.supervised_loss(labeled_logits, label)
        terms: dict[str, torch.Tensor | float] = {"loss_sup": sup}
        loss = sup
        if unlabeled_logits is not None:
            # cases lacking a sequence (missing sequences: a constant channel; on own grids every case) leave
            # the cross-modal terms, whose network of that sequence would read nothing
            present = modality_presence(unlabeled)
            complete = present.all(dim=1)
            probabilities = [torch.softmax(x, dim=1) for x in unlabeled_logits]
            paired = complete_cases(probabilities, complete) or []
            pairs = paired[0].shape[0] if paired else 0
            zero = unlabeled_logits[0].new_zeros(())
            asc = self.asc_loss(paired) if pairs >= 2 else zero
            if self.stage == MUTUAL:
                w_asc, w_mse = float(self.asc_schedule(epoch)), float(self.mse_schedule(epoch))
                mse = self.mutual_loss(paired) if pairs >= 1 else zero
                loss = loss + w_asc * asc + w_mse * mse
                terms.update(loss_asc=asc, loss_mse=mse, weight_asc=w_asc, weight_mse=w_mse)
            else:
                pseudo = self.pseudo_labels(unlabeled)
                prel = self.relearning_loss(unlabeled_logits, pseudo, present)
                w_prel, w_asc = self.prel_weights()
                loss = loss + w_prel * prel + w_asc * asc
                terms.update(loss_prel=prel, loss_asc=asc, weight_prel=w_prel, weight_asc=w_asc)
        return StepOutput(loss=loss, terms=terms, pred=self.mean_of_heads(network, labeled_logits))

    def relearning_loss(self, logits: list[torch.Tensor], pseudo: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """PReL: the mean over the modality networks of the pseudo-label loss of network ``m`` on the
        cases that hold both the teacher's sequence and sequence ``m`` (``present`` (B, M)); a network
        whose own sequence is missing would read nothing, and a teacher that reads nothing has nothing
        to teach. Networks with no such case leave the mean (zero when none has one)."""
        readable = present[:, self.teacher_modality]
        parts = []
        for m, x in enumerate(logits):
            keep = readable & present[:, m]
            if bool(keep.all()):
                parts.append(self.pseudo_label_loss(x, pseudo))
            elif bool(keep.any()):
                parts.append(self.pseudo_label_loss(x[keep], pseudo[keep]))
        return torch.stack(parts).mean() if parts else logits[0].new_zeros(())

    def prel_weights(self) -> tuple[float, float]:
        """The weights ``(w_prel, w_asc)`` of the pseudo-label term and of ASC in the prel stage."""
        if self.prel_convex:
            return self.prel_weight * (1.0 - self.prel_alpha), self.prel_weight * self.prel_alpha
        return self.prel_weight, self.prel_alpha

    def extra_repr(self) -> str:
        return (
            f"stage={self.stage}, mutual_epochs={self.mutual_epochs}, prel_passes={self.prel_passes}, "
            f"prel_noise_std={self.prel_noise_std}, prel_noise_clip={self.prel_noise_clip}, "
            f"prel_alpha={self.prel_alpha}, prel_weight={self.prel_weight}, prel_convex={self.prel_convex}, "
            f"teacher_checkpoints={self.teacher_checkpoints}, teacher_modality={self.teacher_modality}"
        )
