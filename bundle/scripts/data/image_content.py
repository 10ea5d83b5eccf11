# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Where an image has content: the voxels above its own minimum.

Skull-stripped MR is zero outside the brain, and exports that z-scored the whole image (BraTS 2013's
``*_subtrMeanDivStd``) leave that background at one constant value, their minimum; zero-padded
volumes are the same. nnU-Net's first step crops each case to the box of its non-zero voxels; the
minimum generalises "zero" to the constant background of such exports, and on an image with no
constant background (CT with tissue at its minimum, noisy MR) it keeps (almost) everything, so the
crop does nothing there. The planner (``scripts/planning``) decides the crop with the same definition.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["above_background"]


def above_background(image):
    """A mask of the voxels of a channel-first ``image`` (tensor or array, ``C, *spatial``) that lie above
    their own channel's minimum. A channel that is constant (a missing sequence read as zeros) adds
    nothing. ``CropForegroundd`` (``select_fn``) crops to the box of the mask's union over channels."""
    axes = tuple(range(1, image.ndim))
    if isinstance(image, torch.Tensor):
        return image > image.amin(dim=axes, keepdim=True)
    return np.asarray(image) > np.min(image, axis=axes, keepdims=True)
