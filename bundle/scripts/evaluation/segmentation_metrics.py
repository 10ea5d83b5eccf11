# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""The metric handlers of evaluation (``configs/evaluate.yaml``): Dice, 95% Hausdorff distance and
average symmetric surface distance of every head, distances in mm from the voxel size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.handlers import IgniteMetricHandler, MeanDice, from_engine
from monai.metrics import HausdorffDistanceMetric, SurfaceDistanceMetric
from monai.metrics.utils import get_edge_surface_distance
from monai.utils import convert_to_tensor

from .head_outputs import head_keys, metric_name

__all__ = [
    "METRICS",
    "BoundaryDistances",
    "PhysicalHausdorffDistanceMetric",
    "PhysicalSurfaceDistanceMetric",
    "segmentation_metrics",
    "voxel_spacing",
]

#: metric short name -> description, in report order.
METRICS = {"dice": "Dice", "hd95": "HD95", "asd": "ASD"}


def voxel_spacing(image: Any) -> list[float] | None:
    """Voxel size (mm) of a batched ``(1, K, *spatial)`` MetaTensor, from its affine; ``None`` if unknown."""
    affine = getattr(image, "affine", None) if isinstance(image, MetaTensor) else None
    if affine is None:
        return None
    a = torch.as_tensor(affine, dtype=torch.float64).cpu()
    if a.ndim == 3:  # batched affine
        a = a[0]
    d = image.ndim - 2
    if a.shape[0] != d + 1:
        return None
    return [float(v) for v in affine_to_spacing(a, r=d, suppress_zeros=False)]


class BoundaryDistances:
    """
    The percentile Hausdorff distance and the average symmetric surface distance of every case and
    class, ``(B, C)`` each, in mm, from ONE boundary-distance computation per case and class.

    MONAI's ``compute_hausdorff_distance`` and ``compute_average_surface_distance`` each extract the
    same edges and distance maps (``get_edge_surface_distance``), which is most of an evaluation's
    time on small cases; one object of this class, shared by the HD and ASD metrics of a head,
    computes them once and reduces them both ways. The reductions are MONAI's, written again here
    for that reason: per direction the ``percentile`` of the distances, then the larger of the two;
    the mean of both directions' distances; empty masks give MONAI's nan or inf. Tests check the
    values against MONAI's functions, empty masks included.

    The last ``memory`` results are kept with their inputs (compared by content), so that the second
    metric of a head reuses the first one's work whatever the order of the handlers.

    Args:
        include_background: whether class 0 is measured.
        percentile: percentile of the Hausdorff distance (95: HD95); ``None``: the maximum.
        memory: number of recent results kept, >= 1 (at least the cases of a batch).
    """

    def __init__(self, include_background: bool = False, percentile: float | None = 95.0, memory: int = 8) -> None:
        if percentile is not None and not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100] or None, got {percentile}.")
        if int(memory) != memory or memory < 1:
            raise ValueError(f"memory must be an integer >= 1, got {memory}.")
        self.include_background = bool(include_background)
        self.percentile = percentile
        self.memory = int(memory)
        # (prediction, label, spacing, result) of the latest computations, newest first
        self._recent: list[tuple] = []

    def __call__(self, y_pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hausdorff, average_surface)`` of one-hot ``(B, C, *spatial)`` binary ``y_pred`` and ``y``;
        the voxel size comes from ``y_pred``'s affine (voxels when it has none)."""
        spacing = voxel_spacing(y_pred)
        # plain tensors once the spacing is read: on a MetaTensor, every one of the many small operations
        # of MONAI's edge extraction also carries and checks the meta data
        y_pred, y = convert_to_tensor(y_pred, track_meta=False), convert_to_tensor(y, track_meta=False)
        for pred, label, sp, result in self._recent:
            if sp == spacing and pred.shape == y_pred.shape and torch.equal(pred, y_pred) and torch.equal(label, y):
                return result
        result = self._compute(y_pred, y, spacing)
        self._recent = [(y_pred, y, spacing, result)] + self._recent[: self.memory - 1]
        return result

    def _compute(self, y_pred: torch.Tensor, y: torch.Tensor, spacing: list[float] | None):
        if y_pred.shape != y.shape:
            raise ValueError(
                f"y_pred and y should have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        offset = 0 if self.include_background else 1
        y_pred, y = y_pred[:, offset:].float(), y[:, offset:].float()
        batch, classes = y_pred.shape[:2]
        hd = torch.empty((batch, classes), dtype=torch.float, device=y_pred.device)
        asd = torch.empty((batch, classes), dtype=torch.float, device=y_pred.device)
        for b, c in np.ndindex(batch, classes):
            _, distances, _ = get_edge_surface_distance(
                y_pred[b, c], y[b, c], spacing=spacing, symmetric=True, class_index=c + offset
            )
            hd[b, c] = torch.stack([self._percentile(d) for d in distances]).max()
            both = torch.cat(distances)
            asd[b, c] = both.mean() if both.numel() else float("nan")
        return hd, asd

    def _percentile(self, d: torch.Tensor) -> torch.Tensor:
        if d.numel() == 0:
            return torch.tensor(float("nan"), device=d.device)
        return d.max() if self.percentile is None else torch.quantile(d.float(), self.percentile / 100)


class PhysicalHausdorffDistanceMetric(HausdorffDistanceMetric):
    """
    ``HausdorffDistanceMetric`` in millimetres: every case's distances use the voxel size read from
    the affine of its prediction (a MetaTensor, as MONAI's transforms return it), so that a 1.5 mm x
    1.5 mm x 12 mm cardiac grid and a 1 mm isotropic brain grid are both reported in mm. A
    prediction without an affine is measured in voxels. Takes the arguments of the MONAI metric
    (symmetric Euclidean distances only), and ``distances``: a :class:`BoundaryDistances` to share
    with the :class:`PhysicalSurfaceDistanceMetric` of the same predictions (one is made otherwise).
    """

    def __init__(
        self,
        include_background: bool = False,
        percentile: float | None = None,
        distances: BoundaryDistances | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(include_background=include_background, percentile=percentile, **kwargs)
        if self.directed or self.distance_metric != "euclidean":
            raise ValueError("PhysicalHausdorffDistanceMetric measures symmetric Euclidean distances only.")
        self.distances = distances or BoundaryDistances(include_background, percentile, memory=1)
        if (self.distances.include_background, self.distances.percentile) != (include_background, percentile):
            raise ValueError("distances must have the metric's include_background and percentile.")

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.distances(y_pred, y)[0]


class PhysicalSurfaceDistanceMetric(SurfaceDistanceMetric):
    """``SurfaceDistanceMetric`` (symmetric) in millimetres, per case, as
    :class:`PhysicalHausdorffDistanceMetric`, with which it can share ``distances``."""

    def __init__(
        self, include_background: bool = False, distances: BoundaryDistances | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("symmetric", True)
        super().__init__(include_background=include_background, **kwargs)
        if not self.symmetric or self.distance_metric != "euclidean":
            raise ValueError("PhysicalSurfaceDistanceMetric measures symmetric Euclidean distances only.")
        self.distances = distances or BoundaryDistances(include_background, memory=1)
        if self.distances.include_background != include_background:
            raise ValueError("distances must have the metric's include_background.")

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.distances(y_pred, y)[1]


def segmentation_metrics(
    heads: Sequence[str], label_key: str = "label", pred_key: str = "pred", include_background: bool = False
) -> dict[str, Any]:
    """
    MONAI metric handlers of every head: ``<head>_dice`` (``MeanDice``), ``<head>_hd95``
    (95th-percentile Hausdorff distance) and ``<head>_asd`` (average symmetric surface distance),
    each averaged over cases and classes, with per-case, per-class values saved in
    ``engine.state.metric_details`` for :class:`EvaluationReport`. Distances are in millimetres,
    from each case's voxel size (:class:`PhysicalHausdorffDistanceMetric`).

    Args:
        heads: head names, the fused prediction first (see :func:`head_keys` for their keys).
        label_key: key of the one-hot label.
        pred_key: key of the fused one-hot prediction.
        include_background: whether class 0 is evaluated.
    """
    metrics: dict[str, Any] = {}
    for head, key in zip(heads, head_keys(heads, pred_key), strict=False):
        transform = from_engine([key, label_key])
        metrics[metric_name(head, "dice")] = MeanDice(
            include_background=include_background, output_transform=transform, save_details=True
        )
        # one boundary-distance computation per case for both distances of the head
        distances = BoundaryDistances(include_background, percentile=95)
        metrics[metric_name(head, "hd95")] = IgniteMetricHandler(
            metric_fn=PhysicalHausdorffDistanceMetric(include_background, percentile=95, distances=distances),
            output_transform=transform,
            save_details=True,
        )
        metrics[metric_name(head, "asd")] = IgniteMetricHandler(
            metric_fn=PhysicalSurfaceDistanceMetric(include_background, distances=distances),
            output_transform=transform,
            save_details=True,
        )
    return metrics
