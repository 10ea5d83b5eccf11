"""
Anatomy of the embedded synthetic dataset: the shapes of one case and its label map.

A case holds three nested structures, each an ellipse (2D) or ellipsoid (3D) with a random
position, size, aspect and orientation: ``outer`` (like an organ or a body wall), ``wall`` (a ring
inside it, like a myocardium) and ``cavity`` (inside the ring, like a ventricle cavity). The cavity
shares the wall's orientation, so the ring keeps a thickness all around. Two to three "distractor"
blobs (other organs) lie beside ``outer``; they are background in the label map and are only
painted by the modalities (see :mod:`.rendering`). One smooth random deformation per
case (a few low-frequency sine displacement components of up to ``_DEFORMATION_MM`` per 64 voxels
of image size) bends every structure, so boundaries are irregular rather than conic.

Coordinates are millimetres from the image centre on a 1 mm grid (:func:`image_grid`,
:func:`image_affine`). A label map is sampled at given points, so a moved modality sees the same
anatomy through other points.

MONAI's ``create_test_image_2d``/``create_test_image_3d`` are not used: they draw separate,
non-nested circles or spheres with axis-aligned radii from a legacy ``RandomState``, with no
aspect, orientation or deformation, so they cannot draw this anatomy, nor repeat the draws of the
datasets generated so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.transforms.utils import create_grid

__all__ = [
    "SYNTHETIC_LABELS",
    "Anatomy",
    "Ellipsoid",
    "image_affine",
    "image_grid",
    "render_distractors",
    "render_label",
    "sample_anatomy",
]

#: label name -> label value written in the label maps and in ``datalist.json``.
SYNTHETIC_LABELS: dict[str, int] = {"background": 0, "outer": 1, "wall": 2, "cavity": 3}

# peak displacement (mm, per 64 voxels of image size) of the smooth per-case shape deformation
_DEFORMATION_MM = 3.0
# number of distractor structures per case
_DISTRACTORS = (2, 3)
# sampling ranges of the anatomy: outer semi-axis (fraction of the image size), aspect ratios of the
# other outer axes, wall size (fraction of the smallest outer semi-axis), cavity size (fraction of the
# wall), centre shifts (fraction of the image size). 3D uses larger structures so that the small
# classes keep enough voxels despite the cubic volume scaling.
_SHAPE_RANGES: dict[str, dict[int, Any]] = {
    "outer": {2: (0.28, 0.40), 3: (0.34, 0.44)},
    "outer_aspect": {2: (0.7, 1.0), 3: (0.75, 1.0)},
    "outer_shift": {2: 0.06, 3: 0.04},
    "wall": {2: (0.6, 0.75), 3: (0.65, 0.8)},
    "wall_shift": {2: 0.03, 3: 0.025},
    "cavity": {2: (0.5, 0.65), 3: (0.55, 0.7)},
}


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipse (2D) or ellipsoid (3D): centre and semi-axes in mm, rotation whose columns are the axes."""

    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask of the ``points`` (shape ``(dims, *grid)``) inside the ellipsoid."""
        offset = points - self.center.reshape((-1,) + (1,) * (points.ndim - 1))
        local = np.einsum("ji,j...->i...", self.rotation, offset)
        radius = sum((local[i] / self.semi_axes[i]) ** 2 for i in range(local.shape[0]))
        return radius <= 1.0


@dataclass(frozen=True)
class Anatomy:
    """One case: nested outer / wall / cavity ellipsoids, unlabeled distractors, a smooth deformation."""

    outer: Ellipsoid
    wall: Ellipsoid
    cavity: Ellipsoid
    distractors: tuple[Ellipsoid, ...]
    # deformation: displacement_i(p) = sum_k amplitude[k, i] * sin(frequency[k] . p + phase[k])
    frequency: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray

    def deform(self, points: np.ndarray) -> np.ndarray:
        """Anatomy points (shape ``(dims, *grid)``) bent by the case's smooth deformation."""
        out = points.copy()
        for freq, phase, amp in zip(self.frequency, self.phase, self.amplitude, strict=False):
            wave = np.sin(np.einsum("i,i...->...", freq, points) + phase)
            out += amp.reshape((-1,) + (1,) * (points.ndim - 1)) * wave
        return out


def _random_orientation(rng: np.random.Generator, dims: int) -> np.ndarray:
    """Uniformly distributed random rotation matrix."""
    if dims == 2:
        # an angle in radians, unlike misalignment.rotation_matrix's degrees: converting the drawn
        # angle to degrees and back changes its last bit for about one draw in seven
        angle = rng.uniform(0.0, 2.0 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        return np.array([[c, -s], [s, c]])
    # Haar-uniform in 3D: Q of the QR decomposition of a Gaussian matrix, signs fixed by R's diagonal
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def sample_anatomy(rng: np.random.Generator, dims: int, size: int) -> Anatomy:
    """
    Random anatomy of one case (mm, relative to the image centre).

    Args:
        rng: the case's anatomy stream; the number and order of its draws define the dataset.
        dims: 2 or 3.
        size: side length of the image in voxels (1 mm).
    """
    shape = {name: by_dims[dims] for name, by_dims in _SHAPE_RANGES.items()}
    outer_axes = (
        size
        * rng.uniform(*shape["outer"])
        * np.concatenate([[1.0], rng.uniform(*shape["outer_aspect"], size=dims - 1)])
    )
    outer_center = rng.uniform(-1.0, 1.0, dims) * shape["outer_shift"] * size
    outer = Ellipsoid(outer_center, outer_axes, _random_orientation(rng, dims))
    wall_axes = (
        outer_axes.min() * rng.uniform(*shape["wall"]) * np.concatenate([[1.0], rng.uniform(0.8, 1.0, dims - 1)])
    )
    wall_center = outer.center + rng.uniform(-1.0, 1.0, dims) * shape["wall_shift"] * size
    wall = Ellipsoid(wall_center, wall_axes, _random_orientation(rng, dims))
    cavity_axes = wall_axes * rng.uniform(*shape["cavity"]) * rng.uniform(0.9, 1.0, dims)
    cavity = Ellipsoid(wall.center + rng.uniform(-0.01, 0.01, dims) * size, cavity_axes, wall.rotation)
    # placed just outside the outer structure, touching it at most, so they never hide a labeled class
    distractors = []
    for _ in range(int(rng.integers(_DISTRACTORS[0], _DISTRACTORS[1] + 1))):
        direction = rng.normal(size=dims)
        direction /= np.linalg.norm(direction)
        axes = size * rng.uniform(0.06, 0.12, dims)
        distance = outer_axes.max() + axes.max() * rng.uniform(0.6, 1.2)
        center = outer_center + direction * min(distance, 0.5 * size - axes.max())
        distractors.append(Ellipsoid(center, axes, _random_orientation(rng, dims)))
    # wavelengths of 0.5-1.5 image sizes bend the shapes without tearing the ring
    n_waves = 3
    frequency = rng.normal(size=(n_waves, dims))
    frequency *= (2.0 * np.pi / (size * rng.uniform(0.5, 1.5, n_waves)) / np.linalg.norm(frequency, axis=1))[:, None]
    phase = rng.uniform(0.0, 2.0 * np.pi, n_waves)
    amplitude = rng.normal(size=(n_waves, dims)) * (_DEFORMATION_MM * size / 64.0 / np.sqrt(n_waves))
    return Anatomy(outer, wall, cavity, tuple(distractors), frequency, phase, amplitude)


def render_label(anatomy: Anatomy, points: np.ndarray) -> np.ndarray:
    """Label map (uint8) of ``anatomy`` sampled at ``points`` (shape ``(dims, *grid)``)."""
    points = anatomy.deform(points)
    # the ellipsoids may overlap their container's boundary; clipping keeps the classes nested
    in_outer = anatomy.outer.contains(points)
    in_wall = anatomy.wall.contains(points) & in_outer
    in_cavity = anatomy.cavity.contains(points) & in_wall
    label = np.zeros(points.shape[1:], dtype=np.uint8)
    label[in_outer] = SYNTHETIC_LABELS["outer"]
    label[in_wall] = SYNTHETIC_LABELS["wall"]
    label[in_cavity] = SYNTHETIC_LABELS["cavity"]
    return label


def render_distractors(anatomy: Anatomy, points: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Index map of the distractors (0 none, k the k-th distractor) in the background of ``label``."""
    points = anatomy.deform(points)
    index = np.zeros(points.shape[1:], dtype=np.int64)
    for k, blob in enumerate(anatomy.distractors, start=1):
        index[blob.contains(points) & (label == 0)] = k
    return index


def image_grid(dims: int, size: int) -> np.ndarray:
    """Voxel centres in mm relative to the image centre, shape ``(dims, size, ..., size)``, float64."""
    return create_grid((size,) * dims, homogeneous=False, dtype=np.float64)


def image_affine(dims: int, size: int) -> np.ndarray:
    """NIfTI affine of :func:`image_grid`: 1 mm isotropic, world origin at the image centre."""
    affine = np.eye(4)
    affine[:dims, 3] = -(size - 1) / 2.0
    return affine
