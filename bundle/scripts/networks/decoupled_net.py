# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Decoupled multimodal segmentation network of Semi-CML: one independent network per modality.

Reference:
    Zhang et al., "Multi-modal contrastive mutual learning and pseudo-label re-learning for
    semi-supervised medical image segmentation", Medical Image Analysis 83 (2023) 102656.

Data flow for an input ``image`` of shape ``(B, M, *spatial)`` (one channel per modality)::

    modality m:  logits_m = UNet_m(image[:, m:m+1])            # (B, out_channels, *spatial)
    forward():   mean of logits_m over the available modalities

The modality networks share no weights and no features: they interact only through the training
losses (mutual consistency, area-similarity contrast, pseudo-label re-learning), which is why a case
lacking a modality can still be segmented from the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from monai.networks.nets import UNet
from torch import nn

from .input_checks import check_multimodal_input, check_network_levels
from .modality_presence import modality_presence, present_heads_mean

__all__ = ["DecoupledMultiModalNet"]


class DecoupledMultiModalNet(nn.Module):
    """
    ``M`` independent single-channel segmentation networks (MONAI ``UNet``), one per modality.

    :meth:`forward_modalities` (or ``forward(image, heads=True)``, the form that goes through a
    ``DistributedDataParallel`` wrapper) runs every modality network on its own channel and returns
    the ``M`` logits (the training losses of Semi-CML, Mean Teacher and the supervised baseline use
    them). :meth:`forward` returns the mean logits over ``available_modalities`` only, so that a
    case lacking a modality is segmented from the others: the missing channel may hold anything
    (e.g. zeros filled in by the caller) and has no influence on the output. The network satisfies the
    contracts of :mod:`scripts.networks.multimodal` (``MultimodalNetwork`` and ``PerModalityNetworks``).

    Reference:
        Zhang et al., "Multi-modal contrastive mutual learning and pseudo-label re-learning for
        semi-supervised medical image segmentation", Medical Image Analysis 83 (2023) 102656.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        num_modalities: number of modalities ``M`` (input channels), >= 1.
        out_channels: number of output channels (classes, background included) of every network.
        channels: feature channels of the UNet levels, at least 2 levels. The default matches the
            per-modality branch of ``CMCNet``.
        strides: down-sampling strides of the UNet, ``len(channels) - 1`` entries, each an int or
            ``spatial_dims`` ints. ``None`` means 2 everywhere.
        num_res_units: residual units per UNet level (MONAI ``UNet``); 2 gives a per-modality size
            comparable to a ``CMCNet`` branch.
        norm: feature normalisation of the UNets, e.g. ``"instance"`` or ``"batch"``.
        act: activation of the UNets.
        dropout: dropout probability inside every convolution block of the UNets, in [0, 1).
            Semi-CML's pseudo-label re-learning averages stochastic teacher passes, which need
            dropout > 0 to differ beyond the input noise.
        available_modalities: indices of the modalities :meth:`forward` averages over; ``None``
            (default) means all. Set it at inference for cases lacking a modality, e.g.
            ``[0, 2]`` when modality 1 is absent. :meth:`forward_modalities` always runs all.

    Note:
        Every spatial size of the input must be divisible by the product of the strides of that
        dimension (8 with the defaults); :meth:`forward` raises ``ValueError`` otherwise.
        :meth:`forward` is TorchScript-scriptable (``torch.jit.script``).

    Example::

        net = DecoupledMultiModalNet(spatial_dims=2, num_modalities=3, out_channels=4)
        logits = net(torch.randn(2, 3, 64, 64))  # (2, 4, 64, 64), mean of the 3 networks
        per_modality, _ = net.forward_modalities(torch.randn(2, 3, 64, 64))  # 3 x (2, 4, 64, 64)
        t1_flair_only = DecoupledMultiModalNet(2, 3, 4, available_modalities=[0, 2])
    """

    def __init__(
        self,
        spatial_dims: int,
        num_modalities: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[Sequence[int] | int] | None = None,
        num_res_units: int = 2,
        norm: tuple | str = "instance",
        act: tuple | str = "prelu",
        dropout: float = 0.0,
        available_modalities: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        channels, per_dim_strides = check_network_levels(spatial_dims, num_modalities, out_channels, channels, strides)
        if int(num_res_units) != num_res_units or num_res_units < 0:
            raise ValueError(f"num_res_units must be an integer >= 0, got {num_res_units}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        num_modalities = int(num_modalities)
        if available_modalities is None:
            available = list(range(num_modalities))
        else:
            available = [int(m) for m in available_modalities]
            if not available:
                raise ValueError("available_modalities must name at least one modality (or be None for all).")
            if len(set(available)) != len(available) or any(not 0 <= m < num_modalities for m in available):
                raise ValueError(
                    f"available_modalities must be distinct indices in [0, {num_modalities}), got {available}."
                )

        self.spatial_dims = int(spatial_dims)
        self.num_modalities = num_modalities
        self.out_channels = int(out_channels)
        self.available_modalities = available
        divisor = [1] * spatial_dims
        for s in per_dim_strides:
            for d in range(spatial_dims):
                divisor[d] *= s[d]
        self.size_divisor = divisor
        self.networks = nn.ModuleList(
            [
                UNet(
                    spatial_dims=spatial_dims,
                    in_channels=1,
                    out_channels=out_channels,
                    channels=channels,
                    strides=[s[0] if len(set(s)) == 1 else s for s in per_dim_strides],
                    num_res_units=int(num_res_units),
                    act=act,
                    norm=norm,
                    dropout=float(dropout),
                )
                for _ in range(num_modalities)
            ]
        )

    def modality_network(self, modality: int) -> nn.Module:
        """The single-channel network of modality ``modality`` (input ``(B, 1, *spatial)``)."""
        if not 0 <= modality < self.num_modalities:
            raise IndexError(f"modality must be in [0, {self.num_modalities}), got {modality}.")
        return self.networks[modality]

    def _check_input(self, image: torch.Tensor) -> None:
        check_multimodal_input(
            image,
            self.spatial_dims,
            self.num_modalities,
            self.size_divisor,
            "DecoupledMultiModalNet",
            "; fill a missing one with zeros",
        )

    def forward_modalities(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """
        Run every modality network (all of them, whatever ``available_modalities`` says).

        Args:
            image: input of shape ``(B, M, *spatial)``, one channel per modality.

        Returns:
            ``(logits, features)``: ``logits`` is a list of ``M`` tensors of shape
            ``(B, out_channels, *spatial)`` in modality order; ``features`` is an empty list (the
            networks share nothing and MONAI ``UNet`` does not expose its bottleneck; no loss of
            Semi-CML needs features). The pair keeps the interface of ``CMCNet``.
        """
        self._check_input(image)
        logits: list[torch.Tensor] = []
        for m, network in enumerate(self.networks):
            logits.append(network(image[:, m : m + 1]))
        features: list[torch.Tensor] = []
        return logits, features

    def forward(self, image: torch.Tensor, heads: bool = False) -> torch.Tensor:
        """
        Args:
            image: input of shape ``(B, M, *spatial)``, one channel per modality; the channels of
                modalities outside ``available_modalities`` are never read.
            heads: if True, return what :meth:`forward_modalities` returns (every modality network's
                logits, all modalities) instead of the mean. Training uses it so that the call goes
                through a ``DistributedDataParallel`` wrapper's ``forward`` (which synchronises the
                gradients). Python only: a TorchScript module raises when it is True.

        Returns:
            logits of shape ``(B, out_channels, *spatial)``: the mean of the available modality
            networks' logits; with ``heads=True`` the ``(logits, features)`` pair of
            :meth:`forward_modalities`.
        """
        if heads:
            if not torch.jit.is_scripting():
                return self.forward_modalities(image)  # type: ignore[return-value]
            raise RuntimeError(
                "DecoupledMultiModalNet: heads=True is not available in TorchScript; call forward_modalities()."
            )
        self._check_input(image)
        logits: list[torch.Tensor] = []
        used: list[int] = []
        for m, network in enumerate(self.networks):
            if m in self.available_modalities:
                logits.append(network(image[:, m : m + 1]))
                used.append(m)
        presence = modality_presence(image)
        return present_heads_mean(logits, torch.stack([presence[:, m] for m in used], dim=1))

    def average_heads(self, logits: list[torch.Tensor], present: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The network's prediction from every modality network's logits (all ``M``, in modality
        order, as :meth:`forward_modalities` returns them): per case, the mean over
        ``available_modalities`` whose sequence is present (``present``, ``(B, M)``; None: all), as
        :meth:`forward` returns it."""
        return present_heads_mean(logits, present, self.available_modalities)
