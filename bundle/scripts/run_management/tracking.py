# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Makes the validation metrics loggable by experiment trackers (``--tracking mlflow``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

__all__ = ["NamePerClassMetrics"]


class NamePerClassMetrics:
    """
    Replaces every per-class metric of ``engine.state.metrics`` (a tensor with one value per class,
    e.g. ``val_class_dice`` computed with ``reduction="mean_batch"``) by a dict of named scalars
    ``{"<metric>_<class>": value}``.

    MONAI's ``MLFlowHandler`` (added by ``monai.bundle run --tracking mlflow``) logs every entry of
    ``engine.state.metrics`` as a scalar and flattens dicts, so the per-class values reach MLflow as
    ``val_class_dice_outer``, ``val_class_dice_wall``, ... instead of failing on a vector. Attach it
    AFTER the handlers that read the tensors (``ValidationMetricsWriter``, ``TensorBoardStatsHandler``,
    which skips non-scalars anyway): handlers of the same event run in the order they are attached.

    Args:
        class_names: names of the classes, in the order of the per-class tensors; a tensor of
            another length is left as it is.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = [str(c) for c in class_names]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = engine.state.metrics
        for name, value in list(metrics.items()):
            if isinstance(value, torch.Tensor) and value.numel() == len(self.class_names) > 1:
                values = value.detach().cpu().reshape(-1).tolist()
                metrics[name] = {f"{name}_{c}": float(v) for c, v in zip(self.class_names, values, strict=False)}
