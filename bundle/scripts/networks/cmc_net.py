# Copyright (c) the project contributors.
# Licensed under the Apache License, Version 2.0.
"""
Multimodal segmentation network of the CMC (Cross Modality Collaboration) framework.

Reference:
    Zhou et al., "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross Modality
    Collaboration", MICCAI 2024. https://arxiv.org/abs/2408.07341

The network is assembled from MONAI building blocks (``UnetBasicBlock``, ``UnetUpBlock``,
``UnetOutBlock`` and ``Convolution``) and works for 2D and 3D inputs. Data flow for an input
``image`` of shape ``(B, M, *spatial)`` (one channel per modality)::

    modality m:  image[:, m:m+1] --encoder--> skips_m, bottleneck_m --ChannelAttention--> a_m
    all:         fused = ModalityFusion([a_1, ..., a_M])
    modality m:  z_m = merge(concat(a_m, fused))            # 1x1 conv + norm + act, 2C -> C
                 logits_m = decoder_m(z_m, skips_m) -> output head (out_channels)
    forward():   mean_m(logits_m)

Every modality head therefore sees all the other modalities only through ``fused``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetUpBlock

from .input_checks import check_multimodal_input, check_network_levels
from .modality_presence import modality_presence, present_heads_mean

__all__ = ["ChannelAttention", "ModalityFusion", "CMCNet"]


class ChannelAttention(nn.Module):
    """
    Channel attention module (CAM) of the Dual Attention Network, used by CMC on the bottleneck
    features of every modality to model inter-channel dependencies.

    For features ``X`` of shape ``(B, C, *spatial)`` flattened to ``(B, C, N)``:

    .. code-block:: text

        energy    = X @ X^T                                   # (B, C, C)
        attention = softmax(max(energy, dim=-1) - energy, dim=-1)
        out       = gamma * (attention @ X) + X

    ``gamma`` is a learnable scalar initialised to 0, so the module starts as the identity.
    The module has no other parameters and works for any number of channels and spatial dims.
    Note that ``energy`` grows with the number of bottleneck voxels ``N``; for normalised
    features it is ``O(N)``, well inside the float16 range for typical bottleneck sizes.

    Reference:
        Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019.
        https://arxiv.org/abs/1809.02983

    Args:
        init_gamma: initial value of the learnable residual weight ``gamma``. Defaults to 0.

    Example::

        att = ChannelAttention()
        y = att(torch.randn(2, 64, 8, 8))  # same shape as the input
    """

    def __init__(self, init_gamma: float = 0.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1,), float(init_gamma)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: features of shape ``(B, C, *spatial)`` with at least one spatial dimension.

        Returns:
            attended features with the same shape and dtype as ``x``.
        """
        b = x.shape[0]
        c = x.shape[1]
        flat = x.reshape(b, c, -1)  # (B, C, N)
        energy = torch.bmm(flat, flat.transpose(1, 2))  # (B, C, C)
        energy_new = torch.max(energy, dim=-1, keepdim=True)[0] - energy
        attention = torch.softmax(energy_new, dim=-1)
        out = torch.bmm(attention, flat).view_as(x)
        return self.gamma * out + x


class ModalityFusion(nn.Module):
    """
    Fuses the attended bottleneck features of all modalities into one shared representation.

    Design: the ``M`` feature maps (each ``(B, C, *spatial)``) are concatenated along the channel
    axis in modality order and projected back to ``C`` channels with a point-wise (1x1 / 1x1x1)
    convolution followed by normalisation and activation (MONAI ``Convolution``, ordering
    conv -> norm -> dropout -> act). The point-wise projection is a learned, per-location weighting
    of all modalities' channels; it is light (``M*C*C + C`` weights) and never mixes spatial
    positions, so every modality keeps its spatial alignment. The official CMC code fuses two
    modalities with two 3x3 convolutions and a sigmoid; the 1x1 projection here is a lighter
    choice that generalises to any number of modalities.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        num_modalities: number of modality feature maps ``M`` to fuse (>= 1).
        channels: number of channels ``C`` of each modality's features (and of the output).
        norm_name: feature normalisation type and arguments (as accepted by MONAI ``Convolution``).
        act_name: activation type and arguments.
        dropout: dropout probability applied after the normalisation, ``None`` for no dropout.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_modalities: int,
        channels: int,
        norm_name: tuple | str = "instance",
        act_name: tuple | str = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}.")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}.")
        self.num_modalities = num_modalities
        self.proj = Convolution(
            spatial_dims,
            num_modalities * channels,
            channels,
            kernel_size=1,
            norm=norm_name,
            act=act_name,
            dropout=dropout,
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: list of ``M`` tensors, each of shape ``(B, C, *spatial)``.

        Returns:
            fused features of shape ``(B, C, *spatial)``.
        """
        if len(features) != self.num_modalities:
            raise ValueError(
                "ModalityFusion expects " + str(self.num_modalities) + " feature maps, got " + str(len(features)) + "."
            )
        return self.proj(torch.cat(features, dim=1))


class _ModalityEncoder(nn.Module):
    """
    One modality's encoder: a stack of ``UnetBasicBlock`` levels (the first with stride 1, the
    others down-sampling with their stride), followed by :class:`ChannelAttention` on the bottleneck.

    ``forward`` returns ``[skip_0, ..., skip_{L-2}, bottleneck, attended_bottleneck]``: the
    bottleneck before and after the attention.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int],
        strides: Sequence[Sequence[int]],
        norm_name: tuple | str,
        act_name: tuple | str,
        dropout: float | None,
    ) -> None:
        super().__init__()
        blocks = []
        in_ch = 1
        for level, out_ch in enumerate(channels):
            stride: Sequence[int] | int = 1 if level == 0 else strides[level - 1]
            blocks.append(
                UnetBasicBlock(
                    spatial_dims,
                    in_ch,
                    out_ch,
                    kernel_size=3,
                    stride=stride,
                    norm_name=norm_name,
                    act_name=act_name,
                    dropout=dropout,
                )
            )
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.attention = ChannelAttention()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        feats.append(self.attention(feats[-1]))
        return feats


class _ModalityDecoder(nn.Module):
    """
    One modality's decoder: merges the modality's own attended bottleneck with the fused feature
    (channel concat -> 1x1 conv + norm + act, ``2C -> C``), then ``UnetUpBlock`` levels with the
    modality's own skip connections, and a ``UnetOutBlock`` head.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int],
        strides: Sequence[Sequence[int]],
        out_channels: int,
        norm_name: tuple | str,
        act_name: tuple | str,
        dropout: float | None,
    ) -> None:
        super().__init__()
        c_bottleneck = channels[-1]
        self.merge = Convolution(
            spatial_dims, 2 * c_bottleneck, c_bottleneck, kernel_size=1, norm=norm_name, act=act_name, dropout=dropout
        )
        ups = []
        for level in range(len(channels) - 1, 0, -1):
            ups.append(
                UnetUpBlock(
                    spatial_dims,
                    channels[level],
                    channels[level - 1],
                    kernel_size=3,
                    stride=1,
                    upsample_kernel_size=strides[level - 1],
                    norm_name=norm_name,
                    act_name=act_name,
                    dropout=dropout,
                )
            )
        self.ups = nn.ModuleList(ups)
        self.head = UnetOutBlock(spatial_dims, channels[0], out_channels)

    def forward(self, own: torch.Tensor, fused: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.merge(torch.cat([own, fused], dim=1))
        n_skips = len(skips)
        for i, up in enumerate(self.ups):
            x = up(x, skips[n_skips - 1 - i])
        return self.head(x)


class CMCNet(nn.Module):
    """
    Multimodal U-Net style segmentation network of CMC (Cross Modality Collaboration).

    Each modality (one input channel each) is encoded by a U-Net encoder (weights shared across
    modalities by default, as in the official implementation); DANet channel attention
    (:class:`ChannelAttention`) is applied to every modality's bottleneck; a
    :class:`ModalityFusion` layer merges all attended bottlenecks into one fused feature; every
    modality has its own decoder whose input is ``merge(concat(own attended bottleneck, fused))``
    (point-wise conv + norm + act, ``2C -> C``; the merge layer belongs to the decoder and is
    shared with it when ``share_decoder=True``), with skip connections from that modality's own
    encoder, ending in an ``out_channels`` head. :meth:`forward` returns the mean of the modality
    heads' logits; :meth:`forward_modalities` (or ``forward(image, heads=True)``, the form that goes
    through a ``DistributedDataParallel`` wrapper) returns every head's logits and bottleneck
    features (attended, or before the attention with ``feature_source="encoder"``) for the training
    losses (e.g. modality-collaborative contrastive / consistency terms).

    The modality heads interact only through the fused feature: perturbing modality ``j`` changes
    head ``i != j`` only via :class:`ModalityFusion`. The network satisfies the multimodal network
    contract (:class:`scripts.networks.multimodal.MultimodalNetwork`; every head is available).

    Reference:
        Zhou et al., "Robust Semi-supervised Multimodal Medical Image Segmentation via Cross
        Modality Collaboration", MICCAI 2024. https://arxiv.org/abs/2408.07341

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        num_modalities: number of modalities ``M`` (input channels), >= 1. ``M = 1`` gives a
            single-modality U-Net with a bottleneck attention / fusion path.
        out_channels: number of output channels (classes) of every head.
        channels: feature channels of the encoder levels, from the full-resolution level to the
            bottleneck; at least 2 levels.
        strides: down-sampling stride between consecutive levels, ``len(channels) - 1`` entries,
            each an int or a sequence of ``spatial_dims`` ints. ``None`` means 2 everywhere.
        share_encoder: if True, one encoder (and bottleneck attention) is applied to every
            modality; otherwise each modality has its own.
        share_decoder: if True, one decoder (with its merge layer and head) is applied to every
            modality; otherwise each modality has its own.
        norm_name: feature normalisation type and arguments, e.g. ``"instance"``, ``"batch"``
            or ``("group", {"num_groups": 8})``.
        act_name: activation type and arguments.
        dropout: dropout probability inside the convolution blocks, ``None`` for no dropout.
        feature_source: which bottleneck features :meth:`forward_modalities` returns for the
            feature losses (CSC): ``"attended"`` (default, after the channel attention, what the
            fusion and decoders read) or ``"encoder"`` (the encoder output before the attention,
            what the CMC authors' code feeds to CSC). The segmentation is the same either way.

    Note:
        Every spatial size of the input must be divisible by the product of the strides of that
        dimension (8 with the defaults); :meth:`forward` raises ``ValueError`` otherwise (use e.g.
        ``monai.transforms.DivisiblePad`` or a compatible sliding-window ``roi_size``). With
        instance normalisation the bottleneck must have more than one voxel while training.

        The module is TorchScript-scriptable (``torch.jit.script``) and traceable (ONNX export).

    Example::

        net = CMCNet(spatial_dims=2, num_modalities=2, out_channels=4)
        logits = net(torch.randn(8, 2, 64, 64))  # (8, 4, 64, 64)
        head_logits, features = net.forward_modalities(torch.randn(8, 2, 64, 64))
    """

    def __init__(
        self,
        spatial_dims: int,
        num_modalities: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[Sequence[int] | int] | None = None,
        share_encoder: bool = True,
        share_decoder: bool = False,
        norm_name: tuple | str = "instance",
        act_name: tuple | str = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float | None = None,
        feature_source: str = "attended",
    ) -> None:
        super().__init__()
        if feature_source not in ("attended", "encoder"):
            raise ValueError(f'feature_source must be "attended" or "encoder", got {feature_source!r}.')
        channels, norm_strides = check_network_levels(spatial_dims, num_modalities, out_channels, channels, strides)
        if dropout is not None and not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1) or None, got {dropout}.")

        self.spatial_dims = spatial_dims
        self.num_modalities = int(num_modalities)
        self.out_channels = int(out_channels)
        self.channels = channels
        self.strides = norm_strides
        self.share_encoder = bool(share_encoder)
        self.share_decoder = bool(share_decoder)
        self.feature_source = feature_source
        self.bottleneck_channels = channels[-1]
        divisor = [1] * spatial_dims
        for s in norm_strides:
            for d in range(spatial_dims):
                divisor[d] *= s[d]
        self.size_divisor: list[int] = divisor

        n_enc = 1 if self.share_encoder else self.num_modalities
        n_dec = 1 if self.share_decoder else self.num_modalities
        self.encoders = nn.ModuleList(
            [_ModalityEncoder(spatial_dims, channels, norm_strides, norm_name, act_name, dropout) for _ in range(n_enc)]
        )
        self.fusion = ModalityFusion(
            spatial_dims, self.num_modalities, channels[-1], norm_name=norm_name, act_name=act_name, dropout=dropout
        )
        self.decoders = nn.ModuleList(
            [
                _ModalityDecoder(spatial_dims, channels, norm_strides, out_channels, norm_name, act_name, dropout)
                for _ in range(n_dec)
            ]
        )

    def _check_input(self, image: torch.Tensor) -> None:
        check_multimodal_input(image, self.spatial_dims, self.num_modalities, self.size_divisor, "CMCNet", "")

    def _encode(self, image: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per-modality ``[skip_0, ..., skip_{L-2}, bottleneck, attended_bottleneck]`` lists."""
        feats: list[list[torch.Tensor]] = []
        if self.share_encoder:
            for m in range(self.num_modalities):
                feats.append(self.encoders[0](image[:, m : m + 1]))
        else:
            for m, encoder in enumerate(self.encoders):
                feats.append(encoder(image[:, m : m + 1]))
        return feats

    def forward_modalities(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """
        Run every modality branch.

        Args:
            image: input of shape ``(B, M, *spatial)``, one channel per modality.

        Returns:
            ``(logits, features)``: ``logits`` is a list of ``M`` tensors of shape
            ``(B, out_channels, *spatial)`` (one per modality head, modality order);
            ``features`` is a list of ``M`` bottleneck features of shape
            ``(B, channels[-1], *bottleneck_spatial)`` for the training losses: after the channel
            attention (before fusion) with ``feature_source="attended"``, before it with
            ``"encoder"``.
        """
        self._check_input(image)
        enc = self._encode(image)
        attended: list[torch.Tensor] = [f[-1] for f in enc]
        fused = self.fusion(attended)
        logits: list[torch.Tensor] = []
        if self.share_decoder:
            for m in range(self.num_modalities):
                logits.append(self.decoders[0](attended[m], fused, enc[m][:-2]))
        else:
            for m, decoder in enumerate(self.decoders):
                logits.append(decoder(attended[m], fused, enc[m][:-2]))
        if self.feature_source == "encoder":
            return logits, [f[-2] for f in enc]
        return logits, attended

    def forward(self, image: torch.Tensor, heads: bool = False) -> torch.Tensor:
        """
        Args:
            image: input of shape ``(B, M, *spatial)``, one channel per modality.
            heads: if True, return what :meth:`forward_modalities` returns (every head's logits and
                bottleneck features) instead of the fused logits. Training uses it so that
                the call goes through a ``DistributedDataParallel`` wrapper's ``forward`` (which
                synchronises the gradients); calling ``wrapper.module.forward_modalities`` would
                bypass it. Python only: a TorchScript module raises when it is True (call its
                ``forward_modalities`` instead).

        Returns:
            logits of shape ``(B, out_channels, *spatial)``: the mean of the ``M`` modality heads;
            with ``heads=True`` the ``(logits, features)`` pair of :meth:`forward_modalities`.
        """
        if heads:
            if not torch.jit.is_scripting():
                return self.forward_modalities(image)  # type: ignore[return-value]
            raise RuntimeError("CMCNet: heads=True is not available in TorchScript; call forward_modalities().")
        logits, _ = self.forward_modalities(image)
        return self.average_heads(logits, modality_presence(image))

    def average_heads(self, logits: list[torch.Tensor], present: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The network's prediction from its heads' logits (those of :meth:`forward_modalities`):
        per case, their mean over the sequences present (``present``, ``(B, M)``, from
        :func:`~scripts.networks.modality_presence.modality_presence` of the input; None: all), as
        :meth:`forward` returns it: the head of a missing (constant, zero-filled) sequence does not vote."""
        return present_heads_mean(logits, present)
