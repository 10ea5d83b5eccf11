# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""The metric handlers of evaluation (``configs/evaluate.yaml``): Dice, 95% Hausdorff distance and
average symmetric surface distance of every head, distances in mm from the voxel size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.handlers import IgniteMetricHandler, MeanDice, from_engine
from monai.metrics import HausdorffDistanceMetric, SurfaceDistanceMetric

from .head_outputs import head_keys, metric_name

__all__ = [
    "METRICS",
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


def _plain(x: torch.Tensor) -> torch.Tensor:
    # the metrics need only the voxels once the spacing is read: on a MetaTensor, every one of the
    # many small operations of MONAI's edge extraction also carries and checks the meta data
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class PhysicalHausdorffDistanceMetric(HausdorffDistanceMetric):
    """
    ``HausdorffDistanceMetric`` in millimetres: every case's distances use the voxel size read from
    the affine of its prediction (a MetaTensor, as MONAI's transforms return it), so that a 1.5 mm x
    1.5 mm x 12 mm cardiac grid and a 1 mm isotropic brain grid are both reported in mm. A
    prediction without an affine is measured in voxels. Takes the arguments of the MONAI metric.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.setdefault("spacing", voxel_spacing(y_pred))
        return super()._compute_tensor(_plain(y_pred), _plain(y), **kwargs)


class PhysicalSurfaceDistanceMetric(SurfaceDistanceMetric):
    """``SurfaceDistanceMetric`` in millimetres, per case, as :class:`PhysicalHausdorffDistanceMetric`."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        kwargs.setdefault("spacing", voxel_spacing(y_pred))
        return super()._compute_tensor(_plain(y_pred), _plain(y), **kwargs)


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
        metrics[metric_name(head, "hd95")] = IgniteMetricHandler(
            metric_fn=PhysicalHausdorffDistanceMetric(include_background=include_background, percentile=95),
            output_transform=transform,
            save_details=True,
        )
        metrics[metric_name(head, "asd")] = IgniteMetricHandler(
            metric_fn=PhysicalSurfaceDistanceMetric(include_background=include_background, symmetric=True),
            output_transform=transform,
            save_details=True,
        )
    return metrics
