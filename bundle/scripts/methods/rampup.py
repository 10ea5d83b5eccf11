"""
Schedules for loss weights, called with the current (possibly fractional) epoch.

The sigmoid ramp-up ``exp(-5 (1 - t)^2)`` is the one of:

    Laine, S. and Aila, T. "Temporal Ensembling for Semi-Supervised Learning." ICLR 2017.
    Tarvainen, A. and Valpola, H. "Mean teachers are better role models: Weight-averaged consistent targets improve
    semi-supervised deep learning results." NeurIPS 2017.
"""

from __future__ import annotations

import math

__all__ = ["SigmoidRampUp", "LinearRampUp", "CosineRampDown", "ConstantWeight"]


class _WeightSchedule:
    """
    Common argument handling and evaluation of the schedules below: 0 before ``start``, then
    ``weight * shape(t)`` with the ramp progress ``t`` (:meth:`progress`); subclasses give ``shape``.

    Args:
        weight: the final (maximum) weight; must be finite and non-negative.
        length: number of epochs over which the weight ramps up after ``start``; must be finite and non-negative.
            ``0`` means the full weight from ``start`` on.
        start: the epoch at which the schedule begins; the weight is 0 for ``epoch < start``. Must be finite and
            non-negative.

    Raises:
        ValueError: when an argument is negative or not finite.
    """

    def __init__(self, weight: float, length: float = 40.0, start: float = 0.0) -> None:
        for name, value in (("weight", weight), ("length", length), ("start", start)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value}.")
        self.weight = float(weight)
        self.length = float(length)
        self.start = float(start)

    def progress(self, epoch: float) -> float:
        """The ramp-up progress ``t = clip((epoch - start) / length, 0, 1)``; 1 after ``start`` when length is 0."""
        if self.length == 0:
            return 1.0 if epoch >= self.start else 0.0
        return min(max((epoch - self.start) / self.length, 0.0), 1.0)

    def shape(self, t: float) -> float:
        """The schedule's shape at progress ``t`` in [0, 1], as a fraction of ``weight``."""
        raise NotImplementedError

    def __call__(self, epoch: float) -> float:
        if epoch < self.start:
            return 0.0
        return self.weight * self.shape(self.progress(epoch))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight}, length={self.length}, start={self.start})"


class SigmoidRampUp(_WeightSchedule):
    """
    Sigmoid-shaped ramp-up ``weight * exp(-5 (1 - t)^2)`` with ``t = clip((epoch - start) / length, 0, 1)``;
    0 before ``start``, ``weight * exp(-5)`` at ``start`` and ``weight`` from ``start + length`` on
    (Laine & Aila, ICLR 2017; Tarvainen & Valpola, NeurIPS 2017).

    Args:
        weight: the final weight; must be finite and non-negative.
        length: ramp-up duration in epochs; must be non-negative, ``0`` gives the full weight from ``start`` on.
            Defaults to 40.
        start: epoch before which the weight is 0. Defaults to 0.

    Example::

        schedule = SigmoidRampUp(weight=0.1, length=40)
        w = schedule(epoch + iteration / iterations_per_epoch)
    """

    def shape(self, t: float) -> float:
        return math.exp(-5.0 * (1.0 - t) ** 2)


class LinearRampUp(_WeightSchedule):
    """
    Linear ramp-up ``weight * t`` with ``t = clip((epoch - start) / length, 0, 1)``; 0 up to ``start`` and
    ``weight`` from ``start + length`` on.

    Args:
        weight: the final weight; must be finite and non-negative.
        length: ramp-up duration in epochs; must be non-negative, ``0`` gives the full weight from ``start`` on.
            Defaults to 40.
        start: epoch before which the weight is 0. Defaults to 0.
    """

    def shape(self, t: float) -> float:
        return t


class CosineRampDown(_WeightSchedule):
    """
    Cosine ramp-down ``weight * 0.5 * (cos(pi * t) + 1)`` with ``t = clip((epoch - start) / length, 0, 1)``: 0 before
    ``start``, ``weight`` at ``start``, half of it at ``start + length / 2`` and 0 from ``start + length`` on.

    The shape is the cosine annealing of Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
    ICLR 2017; the CMC authors' code weights its CAC term with it over the whole training (``start = 0``,
    ``length = max_epochs``), while CSC ramps up (see ``configs/cmc_paper.yaml``).

    Args:
        weight: the initial (maximum) weight; must be finite and non-negative.
        length: ramp-down duration in epochs; must be non-negative, ``0`` gives 0 from ``start`` on (the weight is
            already fully ramped down). Defaults to 40.
        start: epoch before which the weight is 0 (the term is not active yet) and at which the ramp-down begins.
            Defaults to 0.

    Example::

        schedule = CosineRampDown(weight=1.0, length=500)  # 1 at epoch 0, 0.5 at 250, 0 at 500
        w = schedule(epoch + iteration / iterations_per_epoch)
    """

    def shape(self, t: float) -> float:
        return 0.5 * (math.cos(math.pi * t) + 1.0)


class ConstantWeight(_WeightSchedule):
    """
    Constant weight: 0 before ``start`` and ``weight`` from ``start`` on.

    Args:
        weight: the weight; must be finite and non-negative.
        length: accepted (and validated) only so that all schedules share one signature; it has no effect.
            Defaults to 0.
        start: epoch before which the weight is 0. Defaults to 0.
    """

    def __init__(self, weight: float, length: float = 0.0, start: float = 0.0) -> None:
        super().__init__(weight, length, start)

    def shape(self, t: float) -> float:
        return 1.0
