# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""One semi-supervised trainer for every method of the bundle."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.utils.data import DataLoader, DistributedSampler

from ..errors import BundleError, check_bool
from .method import SemiSupervisedMethod

__all__ = ["SemiSupervisedTrainer", "NonFiniteLossError", "EveryNIterations", "attach_handlers", "loss_terms"]


def _plain_tensor(x: Any) -> Any:
    """The data of a MetaTensor as a plain ``torch.Tensor`` (no copy); anything else unchanged."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class NonFiniteLossError(BundleError, FloatingPointError):
    """Raised when a loss term becomes NaN or infinite; the message names the term and iteration."""


def loss_terms(output: Any) -> dict[str, float]:
    """Output transform for ``StatsHandler`` / ``TensorBoardStatsHandler``: every logged term.

    Returns the total ``loss`` and every ``loss_*``, ``weight_*`` and ``stat_*`` (e.g. the share of
    confident pseudo-labels) entry of the iteration output.
    """
    if isinstance(output, list):  # decollated output: the terms are repeated in every item
        output = output[0]
    return {k: float(v) for k, v in output.items() if k == Keys.LOSS or k.startswith(("loss_", "weight_", "stat_"))}


class EveryNIterations:
    """``StatsHandler``'s ``iteration_log`` filter: log every ``n``-th iteration (``n >= 1``)."""

    def __init__(self, n: int) -> None:
        if int(n) < 1:
            raise ValueError(f"log every n >= 1 iterations, got {n}.")
        self.n = int(n)

    def __call__(self, engine: Any, iteration: int) -> bool:
        return iteration % self.n == 0


def attach_handlers(engine: Engine, handlers: Iterable[Any]) -> Engine:
    """Attaches each handler to ``engine``, in order, and returns it: for handlers that refer to the engine
    themselves (a checkpoint saver keeping the trainer's counters), which cannot be built into its handler list."""
    for handler in handlers:
        handler.attach(engine)
    return engine


class SemiSupervisedTrainer(SupervisedTrainer):
    """A MONAI ``SupervisedTrainer`` whose iteration takes one labeled and one unlabeled batch.

    The epoch is driven by the labeled loader (``train_data_loader``). Each iteration also draws the
    next batch of ``unlabeled_data_loader``, cycling through it indefinitely (reshuffling, and calling
    ``set_epoch`` on a ``DistributedSampler``, at each new pass). What the iteration computes is
    delegated to ``method`` (:class:`scripts.engine.method.SemiSupervisedMethod`); the trainer does the
    rest: device transfer, mixed precision, backward, optimizer step, the events MONAI handlers rely
    on, and a check that every loss term is finite.

    With no unlabeled loader (or an empty one) every method receives ``unlabeled=None`` and trains on
    its supervised terms only, which is how MONAI Label trains a bundle.

    The iteration output holds ``image``, ``label``, ``pred`` (labeled logits), ``loss`` and every
    term the method reports (``loss_*``, ``weight_*``); :func:`loss_terms` selects them for logging.
    Images and labels reach the method as plain tensors (a ``MetaTensor``'s data, without copy): the
    iteration needs no metadata and metadata handling slows every operation down.

    With ``amp`` the method's step (forward passes and losses) runs under ``torch.autocast("cuda")``
    and the backward pass and optimizer step go through the ``GradScaler`` MONAI's trainer creates
    in ``run()``; the network may be wrapped in ``DistributedDataParallel`` (the methods call the
    wrapper, see :func:`scripts.networks.wrapped_network.forward_modality_heads`).

    Args:
        device, max_epochs, train_data_loader, network, optimizer, epoch_length, ...: as
            ``SupervisedTrainer``; remaining keyword arguments are passed on to it.
        method: the training strategy.
        unlabeled_data_loader: loader of unlabeled cases (dicts with ``image``), or ``None``. A batch
            is drawn only for iterations where ``method.uses_unlabeled_at(epoch)`` is true.
        unlabeled_key: the image key of unlabeled batches.
        accumulation_steps: the optimizer steps every this many iterations (and at the end of each
            epoch) on the mean of their gradients; the method's ``after_optimizer_step`` (e.g. an EMA
            teacher's update) follows each optimizer step.

    ``inferer``, ``loss_function`` and ``compile`` of ``SupervisedTrainer`` are refused: the method's
    step calls the network and computes the loss (compile the network itself in the config).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        method: SemiSupervisedMethod,
        unlabeled_data_loader: Iterable | DataLoader | None = None,
        unlabeled_key: str = Keys.IMAGE,
        **kwargs: Any,
    ) -> None:
        if not isinstance(method, SemiSupervisedMethod):
            raise TypeError(f"method must be a SemiSupervisedMethod, got {type(method).__name__}.")
        # SupervisedTrainer arguments this trainer has no use for are refused, not silently ignored:
        # the method calls the network itself (no inferer), and computes its own loss (no loss_function)
        unused = [name for name in ("inferer", "loss_function") if kwargs.get(name) is not None]
        if check_bool(kwargs.get("compile", False), "compile"):
            unused.append("compile")  # compile the network in the config instead: `$torch.compile(...)`
        if unused:
            raise TypeError(
                f"SemiSupervisedTrainer does not use {', '.join(unused)}: the method's step calls the network and "
                'computes the loss (compile the network itself, e.g. network: "$torch.compile(@network_def)").'
            )
        kwargs.pop("compile", None)  # true was refused above
        kwargs["accumulation_steps"] = int(kwargs.get("accumulation_steps", 1))  # `--accumulation_steps 2` as text
        if kwargs["accumulation_steps"] < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {kwargs['accumulation_steps']}.")
        kwargs.setdefault("decollate", False)
        if "amp" in kwargs:
            check_bool(kwargs["amp"], "amp")
        # SupervisedTrainer's first six parameters, in its order
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, _loss_is_the_method, **kwargs)
        self.method = method.to(device)
        self.method.setup(network)
        self.unlabeled_data_loader = unlabeled_data_loader
        self.unlabeled_key = unlabeled_key
        self._unlabeled_iter: Iterator | None = None
        self._unlabeled_pass = 0
        self._unlabeled_cases: list[str] = []  # case ids of the last unlabeled batch, for error messages

    def _has_unlabeled(self) -> bool:
        loader = self.unlabeled_data_loader
        if loader is None or not self.method.uses_unlabeled:
            return False
        try:
            return len(loader) > 0  # type: ignore[arg-type]
        except TypeError:  # iterable without length
            return True

    def next_unlabeled(self) -> torch.Tensor | None:
        """The next unlabeled image batch on the trainer's device, or ``None`` without unlabeled data."""
        if not self._has_unlabeled():
            return None
        for _ in range(2):
            if self._unlabeled_iter is None:
                sampler = getattr(self.unlabeled_data_loader, "sampler", None)
                if isinstance(sampler, DistributedSampler):
                    sampler.set_epoch(self._unlabeled_pass)
                self._unlabeled_pass += 1
                self._unlabeled_iter = iter(self.unlabeled_data_loader)  # type: ignore[arg-type]
            try:
                batch = next(self._unlabeled_iter)
                break
            except StopIteration:
                self._unlabeled_iter = None
        else:
            return None
        image = batch[self.unlabeled_key] if isinstance(batch, dict) else batch
        self._unlabeled_cases = _case_ids(batch)
        return _plain_tensor(image.to(device=self.state.device, non_blocking=self.non_blocking))

    def _iteration(self, engine: SemiSupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        # plain tensors (same storage): the iteration needs no metadata, and every operation on a
        # MetaTensor pays for metadata handling (about 4% of a CPU iteration of the default CMCNet)
        image, label = _plain_tensor(batch[0]), _plain_tensor(batch[1])
        epoch = (engine.state.iteration - 1) / max(engine.state.epoch_length or 1, 1)
        unlabeled = engine.next_unlabeled() if engine.method.uses_unlabeled_at(epoch) else None
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}

        # gradient accumulation over windows of `accumulation_steps` iterations, as SupervisedTrainer does
        # it (gradients zeroed at a window's first iteration, the optimizer stepped at its last, and a
        # window never crosses the end of an epoch), but on the mean over the window's real length, so
        # that the shorter last window of an epoch is not scaled down
        steps, length = engine.accumulation_steps, engine.state.epoch_length
        position = (engine.state.iteration - 1) % length if length else engine.state.iteration - 1
        start = position - position % steps
        window = min(steps, length - start) if length else steps
        first, last = position == start, position == start + window - 1

        engine.network.train()
        engine.method.train()
        if first:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        use_scaler = engine.amp and engine.scaler is not None
        if use_scaler:
            with torch.autocast("cuda", **engine.amp_kwargs):
                result = engine.method.step(engine.network, image, label, unlabeled, epoch)
        else:
            result = engine.method.step(engine.network, image, label, unlabeled, epoch)
        engine.state.output[Keys.PRED] = result.pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine._check_finite(result.loss, result.terms, batchdata)
        engine.state.output[Keys.LOSS] = result.loss
        for name, value in result.terms.items():
            engine.state.output[name] = value.detach() if isinstance(value, torch.Tensor) else value
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        loss = result.loss / window if window > 1 else result.loss
        if use_scaler:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if last:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if last:
                engine.optimizer.step()
        if last:
            engine.method.after_optimizer_step(engine.network, epoch)
        engine.state.output[Keys.LOSS] = result.loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _check_finite(self, loss: torch.Tensor, terms: dict, batchdata: Any = None) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        bad = [
            name
            for name, value in terms.items()
            if not bool(
                torch.isfinite(torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value)).all()
            )
        ]
        named = ", ".join(bad) if bad else "the total loss"
        labeled = ", ".join(_case_ids(batchdata)) or "unknown"
        unlabeled = f"; unlabeled cases: {', '.join(self._unlabeled_cases)}" if self._unlabeled_cases else ""
        raise NonFiniteLossError(
            f"non-finite loss at iteration {self.state.iteration} (epoch {self.state.epoch}): {named}. "
            f"The batch held the labeled cases: {labeled}{unlabeled}. "
            "Training stopped; the last saved checkpoint is left untouched."
        )


def _loss_is_the_method(*_: Any, **__: Any) -> None:
    """``SupervisedTrainer`` requires a ``loss_function``; this trainer's loss is the method's step."""
    raise RuntimeError("SemiSupervisedTrainer computes its loss in method.step(); loss_function is not used.")


def _case_ids(batch: Any) -> list[str]:
    """The ``case`` ids of a collated batch (empty when it has none)."""
    ids = batch.get("case") if isinstance(batch, dict) else None
    if ids is None:
        return []
    return [str(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]
