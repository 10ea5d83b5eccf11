# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
``train.yaml``'s datalist, built on first use, and whether the training cases are a caller's own.

MONAI Label's ``BundleTrainTask`` runs ``train.yaml`` with ``train#dataset#data`` (and
``validate#dataset#data``) replaced by the app's labeled studies. The config's other uses of the
datalist (the unlabeled pool, the resume decision) would still build it: with no dataset configured
that generated the embedded synthetic dataset inside the app's model folder and mixed its unlabeled
cases into the app's training. :class:`DatalistSource` builds the datalist only when something asks
for it, and tells whether the training cases given to the trainer are its ``training`` split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["DatalistSource"]


class DatalistSource:
    """
    Args:
        resolve: callable returning the datalist (``resolve_datalist`` with its arguments bound).
        check: callable checking its cases, ``check(datalist=...)``, returning the datalist.
    """

    def __init__(self, resolve: Callable[[], dict], check: Callable[..., dict] | None = None) -> None:
        self.resolve = resolve
        self.check = check
        self._datalist: dict | None = None

    def get(self) -> dict:
        """The datalist, built (and checked) on the first call."""
        if self._datalist is None:
            datalist = self.resolve()
            self._datalist = self.check(datalist=datalist) if self.check is not None else datalist
        return self._datalist

    def is_external(self, training_data: Any) -> bool:
        """True unless ``training_data`` is the built datalist's ``training`` split (the config's default)."""
        return self._datalist is None or training_data is not self._datalist.get("training")

    def unlabeled_for(self, training_data: Any) -> list:
        """The datalist's unlabeled pool, or none when ``training_data`` is a caller's own cases."""
        return [] if self.is_external(training_data) else list(self.get().get("unlabeled", []))
