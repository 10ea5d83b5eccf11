# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, from_engine
from monai.transforms import AsDiscreted
from monai.utils import CommonKeys
from torch import nn

from ..networks.multimodal import PerModalityNetworks, require_multimodal
from ..networks.wrapped_network import unwrap_network

__all__ = ["ModalityValidationHandler"]


class _ModalityBatch:
    """``prepare_batch`` of modality ``m``'s evaluator: image channel ``m`` and the label it is scored against.

    A label with one channel per modality scores network ``m`` against channel ``m``; any other
    label against its first channel.
    """

    def __init__(self, modality: int, num_modalities: int, image_key: str, label_key: str) -> None:
        self.modality = modality
        self.num_modalities = num_modalities
        self.image_key = image_key
        self.label_key = label_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: torch.device | str | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.modality
        image = torch.as_tensor(batchdata[self.image_key])
        label = torch.as_tensor(batchdata[self.label_key])
        per_modality_label = label.shape[1] == self.num_modalities and self.num_modalities > 1
        target = label[:, m : m + 1] if per_modality_label else label[:, :1]
        return (
            image[:, m : m + 1].to(device=device, non_blocking=non_blocking, **kwargs),
            target.to(device=device, non_blocking=non_blocking, **kwargs),
        )


class ModalityValidationHandler:
    """Validates every modality network of a decoupled multimodal network
    (:class:`~scripts.networks.multimodal.PerModalityNetworks`) separately.

    Attach it to the trainer (``SemiSupervisedTrainer``). Every ``interval`` epochs it runs one MONAI
    ``SupervisedEvaluator`` per modality: the evaluator of modality ``m`` runs ``network.modality_network(m)``
    (in eval mode, without gradients) on image channel ``m`` of the validation loader with ``inferer``;
    its postprocessing takes the argmax and one-hot encodes prediction and label, and its key metric
    is ``MeanDice(include_background=False)`` (mean over cases and foreground classes, gathered over
    all ranks under ``torch.distributed``, as the bundle's main validation). The scores are logged
    and passed to the trainer's method, ``method.record_validation(epoch, scores, network)`` (a hook of
    ``SemiSupervisedMethod``, a no-op but for ``SemiCMLMethod``, which keeps the best checkpoints of each
    modality for the PReL teacher). ``history`` keeps ``(epoch, scores)`` of every round.

    A label with one channel per modality, ``(B, M, *spatial)``, validates network ``m`` against
    channel ``m``; a single-channel label validates every network.

    The evaluators are built at the first validation and reused while the network and the device stay
    the same, so that each one's ``state.best_metric`` is that modality's best score so far.

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
        device: device of the validation; ``None``: the trainer's (``engine.state.device``).
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
        device: torch.device | str | None = None,
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
        self.device = torch.device(device) if device is not None else None
        self.history: list[tuple[int, list[float]]] = []
        self._evaluators: list[SupervisedEvaluator] = []
        self._evaluated: tuple[nn.Module, torch.device] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def _name(self, modality: int) -> str:
        if self.modality_names is not None and modality < len(self.modality_names):
            return str(self.modality_names[modality])
        return f"modality {modality}"

    def _key(self, modality: int) -> str:
        return self._name(modality).replace(" ", "_")

    def metric_name(self, modality: int) -> str:
        """Name of modality ``modality``'s key metric in its evaluator's ``state.metrics``."""
        # not the main evaluator's val_mean_dice: the name appears in the evaluators' "new best metric" lines
        return f"val_mean_dice_{self._key(modality)}"

    def _build_evaluator(self, network: nn.Module, modality: int, device: torch.device) -> SupervisedEvaluator:
        num_modalities = int(network.num_modalities)
        pred_label = [CommonKeys.PRED, CommonKeys.LABEL]
        evaluator = SupervisedEvaluator(
            device=device,
            val_data_loader=self.val_data_loader,
            network=network.modality_network(modality),
            prepare_batch=_ModalityBatch(modality, num_modalities, self.image_key, self.label_key),
            inferer=self.inferer,
            # no softmax: the argmax of the logits is the same, and the scores stay those of the logits
            postprocessing=AsDiscreted(keys=pred_label, argmax=[True, False], to_onehot=self.num_classes),
            key_val_metric={
                self.metric_name(modality): MeanDice(include_background=False, output_transform=from_engine(pred_label))
            },
            # SupervisedEvaluator enters CUDA autocast whatever the device; on the CPU that only warns
            amp=self.amp and device.type == "cuda",
        )
        # ignite would log the runs of every modality on the logger of the bundle's main evaluator
        # (ignite.engine.engine.SupervisedEvaluator); a child of this handler's logger tells them apart
        evaluator.logger = logging.getLogger(f"{self.logger.name}.{self._key(modality)}")
        # the handler's one line per round carries every modality's score; the evaluators' own
        # "resuming" / "new best metric" / "epoch complete" lines (three per modality) would bury it
        if evaluator.logger.level == logging.NOTSET:
            evaluator.logger.setLevel(logging.WARNING)
        return evaluator

    def evaluators(self, network: nn.Module, device: torch.device | str) -> list[SupervisedEvaluator]:
        """The evaluators of every modality network of ``network`` (wrappers such as DDP are unwrapped)."""
        network = unwrap_network(network)
        require_multimodal(network, "ModalityValidationHandler", PerModalityNetworks)
        device = torch.device(device)
        if self._evaluated is None or self._evaluated[0] is not network or self._evaluated[1] != device:
            self._evaluators = [self._build_evaluator(network, m, device) for m in range(int(network.num_modalities))]
            self._evaluated = (network, device)
        return self._evaluators

    def evaluate(self, network: nn.Module, device: torch.device | str, epoch: int = 1) -> list[float]:
        """Mean foreground Dice of every modality network on the validation loader.

        ``epoch`` is the trainer's epoch, passed on to the evaluators (their logs and best-metric epochs).
        """
        scores = []
        for m, evaluator in enumerate(self.evaluators(network, device)):
            name = self.metric_name(m)
            evaluator.run(global_epoch=int(epoch))
            if name not in evaluator.state.metrics:
                # the evaluator skips an empty loader (epoch_length 0) without computing its metric
                raise ValueError("the validation loader of ModalityValidationHandler yielded no batch.")
            scores.append(float(evaluator.state.metrics[name]))
        return scores

    def __call__(self, engine: Engine) -> None:
        network = engine.network  # type: ignore[attr-defined]
        epoch = int(engine.state.epoch)
        device = self.device if self.device is not None else engine.state.device  # type: ignore[attr-defined]
        scores = self.evaluate(network, device, epoch)
        self.history.append((epoch, scores))
        summary = ", ".join(f"{self._name(m)} {s:.4f}" for m, s in enumerate(scores))
        self.logger.info(f"epoch {epoch}: per-modality validation Dice: {summary}")
        engine.method.record_validation(epoch, scores, network)  # type: ignore[attr-defined]
