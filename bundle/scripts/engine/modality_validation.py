# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from torch import nn

__all__ = ["ModalityValidationHandler"]


class ModalityValidationHandler:
    """Validates every modality network of a decoupled multimodal network separately.

    Attach it to the trainer (``SemiSupervisedTrainer``). Every ``interval`` epochs it runs each
    modality network (``network.modality_network(m)``, input ``image[:, m:m+1]``) over the
    validation loader with ``inferer``, takes the argmax, one-hot encodes it and computes MONAI
    ``DiceMetric(include_background=False)`` (mean over cases and foreground classes). The scores
    are logged and, when the trainer's method has ``record_validation`` (``SemiCMLMethod``), passed
    to ``method.record_validation(epoch, scores, network)``, which keeps the best checkpoints of each
    modality for the PReL teacher. ``history`` keeps ``(epoch, scores)`` of every round.

    A label with one channel per modality, ``(B, M, *spatial)``, validates network ``m`` against
    channel ``m``; a single-channel label validates every network.

    Args:
        val_data_loader: validation loader of dicts with ``image_key`` ``(B, M, *spatial)`` and
            ``label_key`` class indices.
        inferer: e.g. ``SlidingWindowInferer``, called as ``inferer(inputs, network)``.
        num_classes: number of classes (background included), for the one-hot encoding.
        interval: validate every ``interval`` epochs, >= 1.
        modality_names: names used in the log; defaults to ``modality 0``, ``modality 1``, ...
        amp: run the inference under CUDA autocast (ignored on the CPU).
        image_key: key of the image in the validation batches.
        label_key: key of the label in the validation batches.
        logger_name: logger of the per-modality Dice line.
    """

    def __init__(
        self,
        val_data_loader: Iterable,
        inferer: Callable[..., Any],
        num_classes: int,
        interval: int = 1,
        modality_names: Sequence[str] | None = None,
        amp: bool = False,
        image_key: str = "image",
        label_key: str = "label",
        logger_name: str = "ModalityValidation",
    ) -> None:
        if int(interval) != interval or interval < 1:
            raise ValueError(f"interval must be an integer >= 1, got {interval}.")
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}.")
        self.val_data_loader = val_data_loader
        self.inferer = inferer
        self.num_classes = int(num_classes)
        self.interval = int(interval)
        self.modality_names = list(modality_names) if modality_names is not None else None
        self.amp = bool(amp)
        self.image_key = image_key
        self.label_key = label_key
        self.logger = logging.getLogger(logger_name)
        self.history: list[tuple[int, list[float]]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def _name(self, modality: int) -> str:
        if self.modality_names is not None and modality < len(self.modality_names):
            return str(self.modality_names[modality])
        return f"modality {modality}"

    def evaluate(self, network: nn.Module, device: torch.device | str) -> list[float]:
        """Mean foreground Dice of every modality network on the validation loader."""
        if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            network = network.module
        if not hasattr(network, "modality_network") or not hasattr(network, "num_modalities"):
            raise TypeError(
                f"ModalityValidationHandler needs a network with `modality_network(m)` and `num_modalities` "
                f"(e.g. DecoupledMultiModalNet), got {type(network).__name__}."
            )
        device = torch.device(device)
        num_modalities = int(network.num_modalities)
        metrics = [DiceMetric(include_background=False, reduction="mean") for _ in range(num_modalities)]
        was_training = network.training
        network.eval()
        autocast = torch.autocast("cuda") if self.amp and device.type == "cuda" else nullcontext()
        try:
            with torch.no_grad(), autocast:
                for batch in self.val_data_loader:
                    image = torch.as_tensor(batch[self.image_key]).to(device)
                    label = torch.as_tensor(batch[self.label_key]).to(device)
                    per_modality_label = label.shape[1] == num_modalities and num_modalities > 1
                    for m in range(num_modalities):
                        logits = self.inferer(image[:, m : m + 1], network.modality_network(m))
                        pred = one_hot(torch.argmax(logits, dim=1, keepdim=True), self.num_classes, dim=1)
                        target = label[:, m : m + 1] if per_modality_label else label[:, :1]
                        metrics[m](y_pred=pred, y=one_hot(target.long(), self.num_classes, dim=1))
        finally:
            network.train(was_training)
        scores = [float(metric.aggregate().item()) for metric in metrics]
        for metric in metrics:
            metric.reset()
        return scores

    def __call__(self, engine: Engine) -> None:
        network = engine.network  # type: ignore[attr-defined]
        scores = self.evaluate(network, engine.state.device)  # type: ignore[attr-defined]
        epoch = int(engine.state.epoch)
        self.history.append((epoch, scores))
        summary = ", ".join(f"{self._name(m)} {s:.4f}" for m, s in enumerate(scores))
        self.logger.info(f"epoch {epoch}: per-modality validation Dice: {summary}")
        method = getattr(engine, "method", None)
        if method is not None and hasattr(method, "record_validation"):
            method.record_validation(epoch, scores, network)
