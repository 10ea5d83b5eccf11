# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""The modality heads' predictions in evaluation: :class:`SplitHeadsd` splits the output of
:class:`scripts.networks.modality_heads.ModalityHeadsWrapper` into ``pred`` (the network's prediction)
and ``pred_<modality>`` (one per head); :func:`evaluated_heads`, :func:`head_keys` and
:func:`metric_name` name them."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch import nn

from ..networks.multimodal import is_multimodal

__all__ = ["SplitHeadsd", "evaluated_heads", "head_keys", "metric_name"]


def evaluated_heads(network: nn.Module, modalities: Sequence[str], fused: str = "fused") -> list[str]:
    """Names of the predictions the evaluation reports: ``fused`` (the network's prediction), then one
    per modality head when the network is multimodal (:func:`scripts.networks.multimodal.is_multimodal`);
    a single network that reads all sequences at once (e.g. ``unet.yaml``) has only ``fused``."""
    return [fused] + (list(modalities) if is_multimodal(network) else [])


def head_keys(heads: Sequence[str], pred_key: str = "pred") -> list[str]:
    """Output keys of the heads: ``pred`` for the first (fused), ``pred_<name>`` for the others."""
    return [pred_key] + [f"{pred_key}_{h}" for h in list(heads)[1:]]


def metric_name(head: str, metric: str) -> str:
    """Name of a metric of a head in the evaluator's metrics, e.g. ``t1_hd95``."""
    return f"{head}_{metric}"


class SplitHeadsd(MapTransform):
    """
    Splits a channel-concatenated prediction ``(len(heads) * C, *spatial)`` into ``len(heads)``
    predictions of ``C`` channels: the first stays under ``key``, head ``i > 0`` goes to
    ``<key>_<heads[i]>``.

    Args:
        keys: the prediction key(s), usually ``"pred"``.
        heads: head names, the fused prediction first, e.g. ``["fused", "t1", "t2", "flair"]``.
    """

    def __init__(self, keys: KeysCollection, heads: Sequence[str], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.heads = [str(h) for h in heads]
        if len(self.heads) < 1 or len(set(self.heads)) != len(self.heads):
            raise ValueError(f"heads must be distinct names, got {heads}.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            n = len(self.heads)
            if pred.shape[0] % n:
                raise ValueError(
                    f"{str(key)!r} has {pred.shape[0]} channels, not a multiple of {n} heads {self.heads}."
                )
            chunks = torch.chunk(pred, n, dim=0) if isinstance(pred, torch.Tensor) else np.split(pred, n, axis=0)
            for out_key, chunk in zip(head_keys(self.heads, str(key)), chunks, strict=False):
                d[out_key] = chunk
        return d
