"""
Image formation of the embedded synthetic dataset: how one modality paints a case, and where a
misaligned modality sees it from.

Each modality paints the label map with its own mean intensity per class and the distractors with
their own random intensity (drawn from ``_DISTRACTOR_INTENSITY``, the foreground range, so a single
modality can mistake them for a labeled class), modulates every tissue by a smooth random texture
(+-``_TEXTURE`` relative), blurs it slightly (partial-volume effect, Gaussian sigma
``_PARTIAL_VOLUME_SIGMA`` voxel), multiplies it by its own smooth random bias field (``exp`` of a
random polynomial of degree <= 2 in the normalised coordinates, with a peak log-amplitude between
half and all of the modality's bias strength) and adds its own Gaussian noise.

A misaligned modality sees the anatomy moved by a random rigid transform: a translation of
between half and all of the requested distance in a random direction, and a rotation of at most
``MAX_MISALIGNMENT_DEG`` about the image centre (about a random axis in 3D).

MONAI's ``RandBiasField``, ``GaussianSmooth`` and ``RandGaussianNoise`` are not used: they draw
from their own ``RandomState`` with other parameterisations (bias coefficients, noise mean/std
draws) or filter differently from ``scipy.ndimage.gaussian_filter``, so the datasets generated so
far would change.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..misalignment import rotation_matrix

__all__ = ["MAX_MISALIGNMENT_DEG", "bias_field", "misaligned_points", "render_image"]

MAX_MISALIGNMENT_DEG = 3.0
_PARTIAL_VOLUME_SIGMA = 0.5
# intensity range of the distractors in every modality
_DISTRACTOR_INTENSITY = (0.25, 0.9)
# relative amplitude and smoothness (voxels) of the tissue texture
_TEXTURE = 0.12
_TEXTURE_SIGMA = 2.0


def bias_field(rng: np.random.Generator, grid: np.ndarray, strength: float) -> np.ndarray:
    """Smooth multiplicative field ``exp(p(x))`` on ``grid``, ``p`` a random polynomial of degree <= 2."""
    dims = grid.shape[0]
    unit = grid / max(float(np.abs(grid).max()), 1e-6)
    terms = [unit[i] for i in range(dims)]
    terms += [unit[i] * unit[j] for i in range(dims) for j in range(i, dims)]
    log_field = sum(c * t for c, t in zip(rng.normal(size=len(terms)), terms, strict=False))
    peak = max(float(np.abs(log_field).max()), 1e-6)
    return np.exp(log_field * (strength * rng.uniform(0.5, 1.0) / peak))


def render_image(
    rng: np.random.Generator,
    label: np.ndarray,
    distractors: np.ndarray,
    grid: np.ndarray,
    class_means: Sequence[float],
    noise_std: float,
    bias_strength: float,
) -> np.ndarray:
    """
    Image (float32) of one modality: ``label`` and the distractor index map painted, textured,
    blurred, biased and made noisy.

    Args:
        rng: the modality's appearance stream; the number and order of its draws define the dataset.
        label: label map of the anatomy as this modality sees it.
        distractors: distractor index map (0 none, k the k-th distractor), same shape as ``label``.
        grid: voxel centres in mm, shape ``(dims, *label.shape)``; the bias field is drawn on it.
        class_means: mean intensity of each label value.
        noise_std: standard deviation of the additive Gaussian noise.
        bias_strength: maximum absolute value of the log bias field.
    """
    image = np.asarray(class_means, dtype=np.float64)[label]
    n_distractors = int(distractors.max())
    if n_distractors:
        levels = np.concatenate([[0.0], rng.uniform(*_DISTRACTOR_INTENSITY, size=n_distractors)])
        image = np.where(distractors > 0, levels[distractors], image)
    texture = ndimage.gaussian_filter(rng.normal(size=label.shape), sigma=_TEXTURE_SIGMA)
    texture *= _TEXTURE / max(float(np.abs(texture).max()), 1e-6)
    image *= 1.0 + texture
    image = ndimage.gaussian_filter(image, sigma=_PARTIAL_VOLUME_SIGMA, mode="nearest")
    image *= bias_field(rng, grid, bias_strength)
    image += rng.normal(0.0, noise_std, size=image.shape)
    return image.astype(np.float32)


def _small_rotation(rng: np.random.Generator, dims: int, max_degrees: float) -> np.ndarray:
    """Rotation by a random angle in ``[-max_degrees, max_degrees]`` (about a random axis in 3D)."""
    angle_deg = rng.uniform(-max_degrees, max_degrees)
    if dims == 2:
        return rotation_matrix(angle_deg, 2)
    # rotation_matrix composes rotations about the array axes; the datasets generated so far turn
    # about a random axis (Rodrigues' formula), drawn after the angle
    angle = np.deg2rad(angle_deg)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def misaligned_points(points: np.ndarray, rng: np.random.Generator, max_mm: float) -> np.ndarray:
    """
    Anatomy coordinates seen at ``points`` (shape ``(dims, *grid)``, mm) by a modality moved by a
    random rigid transform (translation between ``max_mm / 2`` and ``max_mm``, rotation up to
    ``MAX_MISALIGNMENT_DEG``).
    """
    dims = points.shape[0]
    direction = rng.normal(size=dims)
    direction /= np.linalg.norm(direction)
    translation = direction * rng.uniform(0.5, 1.0) * max_mm
    rotation = _small_rotation(rng, dims, MAX_MISALIGNMENT_DEG)
    # a voxel at x shows the anatomy point p with x = R p + t, so p = R^T (x - t)
    shifted = points - translation.reshape((-1,) + (1,) * dims)
    return np.einsum("ji,j...->i...", rotation, shifted)
