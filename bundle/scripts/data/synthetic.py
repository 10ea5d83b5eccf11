"""
Embedded default dataset: small synthetic multimodal "anatomy" volumes written as NIfTI files.

The bundle runs out of the box on this dataset, so the whole pipeline (loading, semi-supervised
training, multimodal fusion, evaluation) can be exercised without downloading real data.

Anatomy
    Every case contains three nested structures drawn with a random position, size, ellipticity
    and orientation (ellipses in 2D, ellipsoids in 3D):

    ======  ==========  =================================================================
    label   name        shape
    ======  ==========  =================================================================
    0       background  everything else
    1       outer       a large ellipse, like an organ or a body wall
    2       wall        a ring inside ``outer`` (an ellipse minus ``cavity``), like a
                        myocardium
    3       cavity      an ellipse inside the ring, like a ventricle cavity
    ======  ==========  =================================================================

Anatomy
    Three nested ellipses (2D) or ellipsoids (3D) of random size, position, aspect and
    orientation, all bent by one smooth random deformation per case (a few low-frequency sine
    displacement components of up to ``_DEFORMATION_MM``), so boundaries are irregular rather than
    conic. Two to three "distractor" structures (other organs) lie beside them: they are
    background in the label, but every modality paints them with its own random intensity drawn
    from the foreground range, so a single modality can mistake them for a labeled class.

Image formation
    Each modality paints the label map with its own mean intensity per class (the contrast
    table below) and the distractors with their per-case intensity, modulates every tissue by a
    smooth random texture (+-``_TEXTURE`` relative), blurs it slightly (partial-volume effect,
    Gaussian sigma 0.5 voxel), multiplies it by its own smooth random bias field (``exp`` of a
    random polynomial of degree <= 2 in the normalised coordinates, with a peak log-amplitude
    between half and all of the modality's bias strength) and adds its own Gaussian noise.

Contrast table (mean intensity per class; modality ``i`` of the requested list uses row ``i``)

    =====  ==========  =====  =====  ======  ===========  ==========  =============
    row    background  outer  wall   cavity  noise std    bias        ambiguous pair
    =====  ==========  =====  =====  ======  ===========  ==========  =============
    0      0.05        0.45   0.80   0.80    0.12         0.30        wall / cavity
    1      0.10        0.65   0.30   0.65    0.15         0.35        outer / cavity
    2      0.05        0.35   0.35   0.90    0.18         0.40        outer / wall
    3      0.12        0.70   0.70   0.30    0.14         0.30        outer / wall
    =====  ==========  =====  =====  ======  ===========  ==========  =============

    In every row one pair of foreground classes has exactly the same mean intensity, so no
    single modality can separate all classes; the pair is separated (by >= 0.3) in another row,
    so fusing modalities does. With only two modalities (rows 0 and 1) the ambiguous pair of each
    is separated by the other. Rows beyond 3 are drawn from a fixed seeded generator (independent
    of the dataset ``seed``): row ``i`` makes the pair ``(wall, cavity)``, ``(outer, cavity)``
    or ``(outer, wall)`` (for ``i % 3 == 0, 1, 2``) share a level in [0.35, 0.8], puts the third
    foreground class at least 0.3 away from it (in [0.25, 1.0]), the background in [0, 0.12],
    the noise std in [0.10, 0.20] and the bias strength in [0.25, 0.40]. Rows 0-2 always exist
    in that case and each separates the pairs ambiguous elsewhere.

Misalignment
    With ``misalignment_mm > 0`` every modality with index >= 1 sees the anatomy moved by its
    own random rigid transform: a translation of between half and all of ``misalignment_mm``
    (random direction) and a rotation of at most 3 degrees about the image centre. Modality 0
    is the reference. One label map per modality (the anatomy as that modality sees it) is
    written and listed as ``"label": {modality: path}``; the reference modality's label is the
    label on the common grid. Random streams are split so that, for the same ``seed``, a
    misaligned dataset has exactly the same anatomy, bias fields and noise as the aligned one:
    only the non-reference modalities move.

Layout of ``output_dir``::

    datalist.json          paths relative to output_dir, see generate_synthetic_dataset
    synthetic.json         manifest: generation parameters and contrast table
    training/syn_0001_t1.nii.gz, training/syn_0001_t2.nii.gz, ..., training/syn_0001_label.nii.gz
    unlabeled/...  validation/...  testing/...

Images are float32, labels uint8, voxel spacing 1 mm, world origin at the image centre.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["SYNTHETIC_LABELS", "SyntheticContrast", "generate_synthetic_dataset", "synthetic_contrast"]

#: label name -> label value written in the label maps and in ``datalist.json``.
SYNTHETIC_LABELS: dict[str, int] = {"background": 0, "outer": 1, "wall": 2, "cavity": 3}

DATALIST_NAME = "datalist.json"
MANIFEST_NAME = "synthetic.json"
GENERATOR_VERSION = 2
SPLITS = ("training", "unlabeled", "validation", "testing")
DEFAULT_IMAGE_SIZE = {2: 64, 3: 40}
# case entries in datalist.json use these keys besides one key per modality
_RESERVED_KEYS = ("case", "image", "label")
_MODALITY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
# seed of the generator that draws contrast rows beyond the fixed table
_CONTRAST_SEED = 7919
_PARTIAL_VOLUME_SIGMA = 0.5
_MAX_MISALIGNMENT_DEG = 3.0
# peak displacement (mm, per 64 voxels of image size) of the smooth per-case shape deformation
_DEFORMATION_MM = 3.0
# number of distractor structures per case, and their intensity range in every modality
_DISTRACTORS = (2, 3)
_DISTRACTOR_INTENSITY = (0.25, 0.9)
# relative amplitude and smoothness (voxels) of the tissue texture
_TEXTURE = 0.12
_TEXTURE_SIGMA = 2.0
# foreground class pairs (label values) made ambiguous by seeded rows, chosen by row index % 3
_SEEDED_PAIRS = ((2, 3), (1, 3), (1, 2))
# sampling ranges of the anatomy: outer semi-axis (fraction of the image size), aspect ratios of the
# other outer axes, wall size (fraction of the smallest outer semi-axis), cavity size (fraction of the
# wall), centre shifts (fraction of the image size). 3D uses larger structures so that the small
# classes keep enough voxels despite the cubic volume scaling.
_SHAPE_RANGES: dict[int, dict[str, Any]] = {
    2: {
        "outer": (0.28, 0.40),
        "outer_aspect": (0.7, 1.0),
        "outer_shift": 0.06,
        "wall": (0.6, 0.75),
        "wall_shift": 0.03,
        "cavity": (0.5, 0.65),
    },
    3: {
        "outer": (0.34, 0.44),
        "outer_aspect": (0.75, 1.0),
        "outer_shift": 0.04,
        "wall": (0.65, 0.8),
        "wall_shift": 0.025,
        "cavity": (0.55, 0.7),
    },
}


@dataclass(frozen=True)
class SyntheticContrast:
    """
    Appearance of one synthetic modality.

    Args:
        class_means: mean intensity of background, outer, wall and cavity (label order).
        noise_std: standard deviation of the additive Gaussian noise.
        bias_strength: maximum absolute value of the log bias field.
        ambiguous_pair: the two foreground labels that share a mean intensity in this modality.
    """

    class_means: tuple[float, float, float, float]
    noise_std: float
    bias_strength: float
    ambiguous_pair: tuple[int, int]


_FIXED_CONTRASTS: tuple[SyntheticContrast, ...] = (
    SyntheticContrast((0.05, 0.45, 0.80, 0.80), 0.12, 0.30, (2, 3)),
    SyntheticContrast((0.10, 0.65, 0.30, 0.65), 0.15, 0.35, (1, 3)),
    SyntheticContrast((0.05, 0.35, 0.35, 0.90), 0.18, 0.40, (1, 2)),
    SyntheticContrast((0.12, 0.70, 0.70, 0.30), 0.14, 0.30, (1, 2)),
)


def synthetic_contrast(index: int) -> SyntheticContrast:
    """
    Contrast of the modality at position ``index`` of the requested modality list.

    Rows 0-3 are the fixed table of the module docstring; later rows are drawn from a generator
    seeded by the row index only, so they do not depend on the dataset seed.

    Args:
        index: position of the modality (0 is the reference modality).
    """
    if index < 0:
        raise ValueError(f"modality index must be >= 0, got {index}.")
    if index < len(_FIXED_CONTRASTS):
        return _FIXED_CONTRASTS[index]
    rng = np.random.default_rng([_CONTRAST_SEED, index])
    pair = _SEEDED_PAIRS[index % 3]
    (other,) = {1, 2, 3} - set(pair)
    shared = float(rng.uniform(0.35, 0.8))
    third = float(rng.uniform(0.25, 1.0))
    while abs(third - shared) < 0.3:
        third = float(rng.uniform(0.25, 1.0))
    means = [float(rng.uniform(0.0, 0.12)), 0.0, 0.0, 0.0]
    means[pair[0]] = means[pair[1]] = shared
    means[other] = third
    return SyntheticContrast(
        class_means=(round(means[0], 4), round(means[1], 4), round(means[2], 4), round(means[3], 4)),
        noise_std=round(float(rng.uniform(0.10, 0.20)), 4),
        bias_strength=round(float(rng.uniform(0.25, 0.40)), 4),
        ambiguous_pair=pair,
    )


def generate_synthetic_dataset(
    output_dir: str,
    spatial_dims: int = 2,
    modalities: Sequence[str] = ("t1", "t2", "flair"),
    image_size: int | None = None,
    num_training: int = 40,
    num_unlabeled: int = 40,
    num_validation: int = 10,
    num_testing: int = 10,
    misalignment_mm: float = 0.0,
    seed: int = 0,
) -> str:
    """
    Generate the synthetic multimodal dataset once and return the path of its ``datalist.json``.

    The parameters are recorded in ``<output_dir>/synthetic.json``. A later call with identical
    parameters returns immediately without touching the files; a call with different parameters
    raises instead of overwriting. Files are written into a temporary sibling folder that is
    renamed to ``output_dir`` only when complete, so an interrupted run never leaves a dataset
    that looks finished (it may leave a hidden ``.<name>.partial-*`` sibling, safe to delete).

    ``datalist.json`` holds paths relative to ``output_dir``::

        {"modalities": ["t1", "t2", "flair"],
         "labels": {"background": 0, "outer": 1, "wall": 2, "cavity": 3},
         "spatial_dims": 2,
         "training": [{"case": "syn_0001", "t1": "training/syn_0001_t1.nii.gz", ...,
                       "label": "training/syn_0001_label.nii.gz"}, ...],
         "unlabeled": [...],   # no "label"
         "validation": [...], "testing": [...]}

    With ``misalignment_mm > 0`` each ``label`` is ``{modality: "<split>/<case>_label_<modality>.nii.gz"}``.

    Args:
        output_dir: folder of the dataset; created (with its parents) if needed. It must be absent,
            empty, or hold a dataset generated earlier with identical parameters.
        spatial_dims: 2 for 2D images, 3 for 3D volumes.
        modalities: names of the modalities, at least two, unique, made of letters, digits, ``_``
            and ``-``; the first one is the reference modality. Their contrasts follow the table
            in the module docstring by position.
        image_size: side length in voxels of the square/cubic images; default 64 in 2D, 40 in 3D.
        num_training: number of labeled training cases (>= 1).
        num_unlabeled: number of unlabeled training cases (their labels are not written).
        num_validation: number of labeled validation cases.
        num_testing: number of labeled testing cases.
        misalignment_mm: maximum rigid translation (mm) of every non-reference modality; 0 keeps
            all modalities co-registered.
        seed: non-negative seed; the same parameters and seed give identical voxels.

    Raises:
        ValueError: invalid parameters (fewer than two modalities, ``spatial_dims`` not 2 or 3, ...).
        FileExistsError: ``output_dir`` holds something other than a dataset with these parameters.
    """
    params = _normalise_parameters(
        spatial_dims=spatial_dims,
        modalities=modalities,
        image_size=image_size,
        num_training=num_training,
        num_unlabeled=num_unlabeled,
        num_validation=num_validation,
        num_testing=num_testing,
        misalignment_mm=misalignment_mm,
        seed=seed,
    )
    out_dir = os.path.abspath(os.fspath(output_dir))
    datalist_path = os.path.join(out_dir, DATALIST_NAME)
    if _existing_dataset_matches(out_dir, params):
        return datalist_path

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    partial_dir: str | None = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        os.chmod(partial_dir, 0o755)  # mkdtemp makes it private; the dataset is meant to be shared
        _write_dataset(partial_dir, params)
        try:
            # replaces `out_dir` only when it is missing or an empty folder
            os.replace(partial_dir, out_dir)
        except OSError:
            # another process may have completed the same dataset meanwhile
            if _existing_dataset_matches(out_dir, params):
                return datalist_path
            raise
        partial_dir = None
    finally:
        if partial_dir is not None:
            shutil.rmtree(partial_dir, ignore_errors=True)
    return datalist_path


def _normalise_parameters(
    spatial_dims: int,
    modalities: Sequence[str],
    image_size: int | None,
    num_training: int,
    num_unlabeled: int,
    num_validation: int,
    num_testing: int,
    misalignment_mm: float,
    seed: int,
) -> dict[str, Any]:
    """Validate the arguments of :func:`generate_synthetic_dataset` and return them as a JSON-ready dict."""
    if _as_int(spatial_dims) not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    spatial_dims = int(spatial_dims)
    if isinstance(modalities, (str, bytes)) or not isinstance(modalities, Sequence):
        raise ValueError(f"modalities must be a sequence of modality names, got {modalities!r}.")
    names = list(modalities)
    if len(names) < 2:
        raise ValueError(f"the synthetic dataset needs at least 2 modalities, got {names!r}.")
    for name in names:
        if not isinstance(name, str) or not _MODALITY_NAME.match(name):
            raise ValueError(
                f"invalid modality name {name!r}: use letters, digits, '_' and '-' (not starting with '_' or '-')."
            )
        if name in _RESERVED_KEYS:
            raise ValueError(f"modality name {name!r} is reserved in the datalist; choose another name.")
    if len(set(names)) != len(names):
        raise ValueError(f"modality names must be unique, got {names!r}.")
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE[spatial_dims]
    if _as_int(image_size) is None or int(image_size) < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}.")
    counts = {
        "num_training": num_training,
        "num_unlabeled": num_unlabeled,
        "num_validation": num_validation,
        "num_testing": num_testing,
    }
    for key, value in counts.items():
        if _as_int(value) is None or int(value) < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {value!r}.")
    if int(num_training) < 1:
        raise ValueError("num_training must be >= 1: semi-supervised training needs labeled cases.")
    try:
        misalignment = float(misalignment_mm)
    except (TypeError, ValueError):
        raise ValueError(f"misalignment_mm must be a number, got {misalignment_mm!r}.") from None
    if not np.isfinite(misalignment) or misalignment < 0:
        raise ValueError(f"misalignment_mm must be a finite number >= 0, got {misalignment_mm!r}.")
    if _as_int(seed) is None or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return {
        "generator_version": GENERATOR_VERSION,
        "spatial_dims": spatial_dims,
        "modalities": names,
        "image_size": int(image_size),
        **{key: int(value) for key, value in counts.items()},
        "misalignment_mm": misalignment,
        "seed": int(seed),
    }


def _as_int(value: Any) -> int | None:
    """Return ``value`` as an int when it is an integral number (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return None


def _existing_dataset_matches(out_dir: str, params: dict[str, Any]) -> bool:
    """
    Check what ``out_dir`` holds: False when absent or empty, True when it is a complete dataset
    generated with ``params``; otherwise raise FileExistsError explaining what to do.
    """
    if not os.path.lexists(out_dir):
        return False
    if not os.path.isdir(out_dir):
        raise FileExistsError(f"synthetic dataset folder {out_dir} exists and is not a folder; use another output_dir.")
    if not os.listdir(out_dir):
        return False
    advice = "Delete the folder to regenerate the dataset, or choose another output folder."
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    if not os.path.isfile(manifest_path):
        raise FileExistsError(
            f"folder {out_dir} is not empty and has no {MANIFEST_NAME}, so it is not a synthetic dataset; "
            "it will not be overwritten. Choose another output folder."
        )
    try:
        with open(manifest_path, encoding="utf-8") as f:
            recorded = json.load(f).get("parameters")
    except (OSError, ValueError, AttributeError) as e:
        raise FileExistsError(f"cannot read the synthetic dataset manifest {manifest_path}: {e}. {advice}") from e
    requested = json.loads(json.dumps(params))
    if recorded != requested:
        recorded = recorded if isinstance(recorded, dict) else {}
        diffs = [
            f"  {key}: existing {recorded.get(key, '<missing>')!r}, requested {requested.get(key, '<missing>')!r}"
            for key in sorted(set(recorded) | set(requested))
            if recorded.get(key) != requested.get(key)
        ]
        raise FileExistsError(
            f"the synthetic dataset in {out_dir} was generated with different parameters:\n"
            + "\n".join(diffs)
            + f"\n{advice}"
        )
    if not os.path.isfile(os.path.join(out_dir, DATALIST_NAME)):
        raise FileExistsError(f"the synthetic dataset in {out_dir} has no {DATALIST_NAME} (incomplete). {advice}")
    return True


# ------------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class _Ellipsoid:
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


def _random_rotation(rng: np.random.Generator, dims: int) -> np.ndarray:
    """Uniformly distributed random rotation matrix."""
    if dims == 2:
        angle = rng.uniform(0.0, 2.0 * np.pi)
        return _rotation_2d(angle)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _rotation_2d(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _small_rotation(rng: np.random.Generator, dims: int, max_degrees: float) -> np.ndarray:
    """Rotation by a random angle in ``[-max_degrees, max_degrees]`` (about a random axis in 3D)."""
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    if dims == 2:
        return _rotation_2d(angle)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


@dataclass(frozen=True)
class _Anatomy:
    """One case: nested outer / wall / cavity ellipsoids, unlabeled distractors, a smooth deformation."""

    outer: _Ellipsoid
    wall: _Ellipsoid
    cavity: _Ellipsoid
    distractors: tuple[_Ellipsoid, ...]
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


def _sample_anatomy(rng: np.random.Generator, dims: int, size: int) -> _Anatomy:
    """Random anatomy of one case (mm, relative to the image centre)."""
    shape = _SHAPE_RANGES[dims]
    outer_axes = (
        size
        * rng.uniform(*shape["outer"])
        * np.concatenate([[1.0], rng.uniform(*shape["outer_aspect"], size=dims - 1)])
    )
    outer_center = rng.uniform(-1.0, 1.0, dims) * shape["outer_shift"] * size
    outer = _Ellipsoid(outer_center, outer_axes, _random_rotation(rng, dims))
    wall_axes = (
        outer_axes.min() * rng.uniform(*shape["wall"]) * np.concatenate([[1.0], rng.uniform(0.8, 1.0, dims - 1)])
    )
    wall_center = outer.center + rng.uniform(-1.0, 1.0, dims) * shape["wall_shift"] * size
    wall = _Ellipsoid(wall_center, wall_axes, _random_rotation(rng, dims))
    # same orientation as the wall so that the ring keeps a thickness all around
    cavity_axes = wall_axes * rng.uniform(*shape["cavity"]) * rng.uniform(0.9, 1.0, dims)
    cavity = _Ellipsoid(wall.center + rng.uniform(-0.01, 0.01, dims) * size, cavity_axes, wall.rotation)
    # distractors: small blobs around the outer structure, touching it at most
    distractors = []
    for _ in range(int(rng.integers(_DISTRACTORS[0], _DISTRACTORS[1] + 1))):
        direction = rng.normal(size=dims)
        direction /= np.linalg.norm(direction)
        axes = size * rng.uniform(0.06, 0.12, dims)
        distance = outer_axes.max() + axes.max() * rng.uniform(0.6, 1.2)
        center = outer_center + direction * min(distance, 0.5 * size - axes.max())
        distractors.append(_Ellipsoid(center, axes, _random_rotation(rng, dims)))
    # smooth deformation: 3 sine components with wavelengths of 0.5-1.5 image sizes
    n_waves = 3
    frequency = rng.normal(size=(n_waves, dims))
    frequency *= (2.0 * np.pi / (size * rng.uniform(0.5, 1.5, n_waves)) / np.linalg.norm(frequency, axis=1))[:, None]
    phase = rng.uniform(0.0, 2.0 * np.pi, n_waves)
    amplitude = rng.normal(size=(n_waves, dims)) * (_DEFORMATION_MM * size / 64.0 / np.sqrt(n_waves))
    return _Anatomy(outer, wall, cavity, tuple(distractors), frequency, phase, amplitude)


def _render_label(anatomy: _Anatomy, points: np.ndarray) -> np.ndarray:
    """Label map of ``anatomy`` sampled at ``points`` (shape ``(dims, *grid)``); nesting is enforced."""
    points = anatomy.deform(points)
    in_outer = anatomy.outer.contains(points)
    in_wall = anatomy.wall.contains(points) & in_outer
    in_cavity = anatomy.cavity.contains(points) & in_wall
    label = np.zeros(points.shape[1:], dtype=np.uint8)
    label[in_outer] = SYNTHETIC_LABELS["outer"]
    label[in_wall] = SYNTHETIC_LABELS["wall"]
    label[in_cavity] = SYNTHETIC_LABELS["cavity"]
    return label


def _render_distractors(anatomy: _Anatomy, points: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Index map of the distractors (0 none, k the k-th distractor) in the background of ``label``."""
    points = anatomy.deform(points)
    index = np.zeros(points.shape[1:], dtype=np.int64)
    for k, blob in enumerate(anatomy.distractors, start=1):
        index[blob.contains(points) & (label == 0)] = k
    return index


def _grid(dims: int, size: int) -> np.ndarray:
    """Voxel centres in mm relative to the image centre, shape ``(dims, size, ..., size)``."""
    axis = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    return np.stack(np.meshgrid(*([axis] * dims), indexing="ij"))


def _affine(dims: int, size: int) -> np.ndarray:
    """1 mm isotropic affine placing the world origin at the image centre."""
    affine = np.eye(4)
    affine[:dims, 3] = -(size - 1) / 2.0
    return affine


# ------------------------------------------------------------------------------------------------
# appearance


def _bias_field(rng: np.random.Generator, grid: np.ndarray, strength: float) -> np.ndarray:
    """Smooth multiplicative field ``exp(p(x))``, ``p`` a random polynomial of degree <= 2."""
    dims = grid.shape[0]
    unit = grid / max(float(np.abs(grid).max()), 1e-6)
    terms = [unit[i] for i in range(dims)]
    terms += [unit[i] * unit[j] for i in range(dims) for j in range(i, dims)]
    log_field = sum(c * t for c, t in zip(rng.normal(size=len(terms)), terms, strict=False))
    peak = max(float(np.abs(log_field).max()), 1e-6)
    return np.exp(log_field * (strength * rng.uniform(0.5, 1.0) / peak))


def _render_image(
    rng: np.random.Generator, label: np.ndarray, distractors: np.ndarray, grid: np.ndarray, contrast: SyntheticContrast
) -> np.ndarray:
    """Paint ``label`` (and the distractor index map) with ``contrast``: class means, texture,
    partial-volume blur, bias field, noise."""
    image = np.asarray(contrast.class_means, dtype=np.float64)[label]
    n_distractors = int(distractors.max())
    if n_distractors:
        levels = np.concatenate([[0.0], rng.uniform(*_DISTRACTOR_INTENSITY, size=n_distractors)])
        image = np.where(distractors > 0, levels[distractors], image)
    texture = ndimage.gaussian_filter(rng.normal(size=label.shape), sigma=_TEXTURE_SIGMA)
    texture *= _TEXTURE / max(float(np.abs(texture).max()), 1e-6)
    image *= 1.0 + texture
    image = ndimage.gaussian_filter(image, sigma=_PARTIAL_VOLUME_SIGMA, mode="nearest")
    image *= _bias_field(rng, grid, contrast.bias_strength)
    image += rng.normal(0.0, contrast.noise_std, size=image.shape)
    return image.astype(np.float32)


def _misalign(points: np.ndarray, rng: np.random.Generator, max_mm: float) -> np.ndarray:
    """
    Anatomy coordinates seen at ``points`` by a modality moved by a random rigid transform
    (translation between ``max_mm / 2`` and ``max_mm``, rotation up to a few degrees).
    """
    dims = points.shape[0]
    direction = rng.normal(size=dims)
    direction /= np.linalg.norm(direction)
    translation = direction * rng.uniform(0.5, 1.0) * max_mm
    rotation = _small_rotation(rng, dims, _MAX_MISALIGNMENT_DEG)
    # a voxel at x shows the anatomy point p with x = R p + t, so p = R^T (x - t)
    shifted = points - translation.reshape((-1,) + (1,) * dims)
    return np.einsum("ji,j...->i...", rotation, shifted)


# ------------------------------------------------------------------------------------------------
# writing


def _save_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def _write_dataset(root: str, params: dict[str, Any]) -> None:
    """Write every case, ``datalist.json`` and, last, the manifest into ``root``."""
    dims: int = params["spatial_dims"]
    size: int = params["image_size"]
    modalities: list[str] = params["modalities"]
    seed: int = params["seed"]
    misalignment: float = params["misalignment_mm"]
    contrasts = [synthetic_contrast(i) for i in range(len(modalities))]
    grid = _grid(dims, size)
    affine = _affine(dims, size)
    counts = {
        "training": params["num_training"],
        "unlabeled": params["num_unlabeled"],
        "validation": params["num_validation"],
        "testing": params["num_testing"],
    }
    datalist: dict[str, Any] = {
        "description": "synthetic multimodal anatomy generated by scripts.data.synthetic",
        "modalities": list(modalities),
        "labels": dict(SYNTHETIC_LABELS),
        "spatial_dims": dims,
    }
    case_index = 0
    for split in SPLITS:
        os.makedirs(os.path.join(root, split), exist_ok=True)
        entries = []
        for _ in range(counts[split]):
            case_index += 1
            case_id = f"syn_{case_index:04d}"
            # independent random streams: anatomy, per-modality appearance, per-modality motion
            anatomy = _sample_anatomy(np.random.default_rng([seed, case_index, 0]), dims, size)
            entry: dict[str, Any] = {"case": case_id}
            labels: dict[str, np.ndarray] = {}
            for m, (name, contrast) in enumerate(zip(modalities, contrasts, strict=False)):
                points = grid
                if misalignment > 0 and m > 0:
                    points = _misalign(grid, np.random.default_rng([seed, case_index, 2, m]), misalignment)
                labels[name] = _render_label(anatomy, points)
                distractors = _render_distractors(anatomy, points, labels[name])
                image = _render_image(
                    np.random.default_rng([seed, case_index, 1, m]), labels[name], distractors, grid, contrast
                )
                rel = f"{split}/{case_id}_{name}.nii.gz"
                _save_nifti(os.path.join(root, rel), image, affine)
                entry[name] = rel
            if split != "unlabeled":
                if misalignment > 0:
                    entry["label"] = {}
                    for name in modalities:
                        rel = f"{split}/{case_id}_label_{name}.nii.gz"
                        _save_nifti(os.path.join(root, rel), labels[name], affine)
                        entry["label"][name] = rel
                else:
                    rel = f"{split}/{case_id}_label.nii.gz"
                    _save_nifti(os.path.join(root, rel), labels[modalities[0]], affine)
                    entry["label"] = rel
            entries.append(entry)
        datalist[split] = entries

    with open(os.path.join(root, DATALIST_NAME), "w", encoding="utf-8") as f:
        json.dump(datalist, f, indent=1)
    manifest = {
        "generator": "scripts.data.synthetic.generate_synthetic_dataset",
        "parameters": params,
        "labels": dict(SYNTHETIC_LABELS),
        "contrast": {name: asdict(c) for name, c in zip(modalities, contrasts, strict=False)},
    }
    with open(os.path.join(root, MANIFEST_NAME), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
