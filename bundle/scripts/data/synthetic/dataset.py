"""
Embedded default dataset: small synthetic multimodal "anatomy" volumes written as NIfTI files.

The bundle runs out of the box on this dataset, so the whole pipeline (loading, semi-supervised
training, multimodal fusion, evaluation) can be exercised without downloading real data. This
module holds the public entry point (:func:`generate_synthetic_dataset`), the contrast table and
the writing of the files; the shapes are drawn by :mod:`.anatomy` and painted by
:mod:`.rendering`.

Labels (``SYNTHETIC_LABELS``)

    ======  ==========  =================================================================
    label   name        shape
    ======  ==========  =================================================================
    0       background  everything else, including 2-3 unlabeled "distractor" structures
    1       outer       a large ellipse (ellipsoid in 3D), like an organ or a body wall
    2       wall        a ring inside ``outer`` (an ellipse minus ``cavity``), like a
                        myocardium
    3       cavity      an ellipse inside the ring, like a ventricle cavity
    ======  ==========  =================================================================

    Every case has its own random position, size, aspect, orientation and smooth deformation of
    the structures.

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
    in that case and each separates the pairs ambiguous elsewhere. Every modality also adds its
    own texture, blur, bias field and noise, and paints the distractors with its own intensities.

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

from ...errors import InputError, OverwriteRefusedError
from .anatomy import SYNTHETIC_LABELS, image_affine, image_grid, render_distractors, render_label, sample_anatomy
from .rendering import misaligned_points, render_image

__all__ = ["SYNTHETIC_LABELS", "SyntheticContrast", "generate_synthetic_dataset", "synthetic_contrast"]

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
# foreground class pairs (label values) made ambiguous by seeded rows, chosen by row index % 3
_SEEDED_PAIRS = ((2, 3), (1, 3), (1, 2))


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
        raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    spatial_dims = int(spatial_dims)
    if isinstance(modalities, (str, bytes)) or not isinstance(modalities, Sequence):
        raise InputError(f"modalities must be a sequence of modality names, got {modalities!r}.")
    names = list(modalities)
    if len(names) < 2:
        raise InputError(f"the synthetic dataset needs at least 2 modalities, got {names!r}.")
    for name in names:
        if not isinstance(name, str) or not _MODALITY_NAME.match(name):
            raise InputError(
                f"invalid modality name {name!r}: use letters, digits, '_' and '-' (not starting with '_' or '-')."
            )
        if name in _RESERVED_KEYS:
            raise InputError(f"modality name {name!r} is reserved in the datalist; choose another name.")
    if len(set(names)) != len(names):
        raise InputError(f"modality names must be unique, got {names!r}.")
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE[spatial_dims]
    if _as_int(image_size) is None or int(image_size) < 16:
        raise InputError(f"image_size must be an integer >= 16, got {image_size!r}.")
    counts = {
        "num_training": num_training,
        "num_unlabeled": num_unlabeled,
        "num_validation": num_validation,
        "num_testing": num_testing,
    }
    for key, value in counts.items():
        if _as_int(value) is None or int(value) < 0:
            raise InputError(f"{key} must be a non-negative integer, got {value!r}.")
    if int(num_training) < 1:
        raise InputError("num_training must be >= 1: semi-supervised training needs labeled cases.")
    try:
        misalignment = float(misalignment_mm)
    except (TypeError, ValueError):
        raise InputError(f"misalignment_mm must be a number, got {misalignment_mm!r}.") from None
    if not np.isfinite(misalignment) or misalignment < 0:
        raise InputError(f"misalignment_mm must be a finite number >= 0, got {misalignment_mm!r}.")
    if _as_int(seed) is None or int(seed) < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
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
    generated with ``params``; otherwise raise OverwriteRefusedError (a FileExistsError) explaining what to do.
    """
    if not os.path.lexists(out_dir):
        return False
    if not os.path.isdir(out_dir):
        raise OverwriteRefusedError(
            f"synthetic dataset folder {out_dir} exists and is not a folder; use another output_dir."
        )
    if not os.listdir(out_dir):
        return False
    advice = "Delete the folder to regenerate the dataset, or choose another output folder."
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    if not os.path.isfile(manifest_path):
        raise OverwriteRefusedError(
            f"folder {out_dir} is not empty and has no {MANIFEST_NAME}, so it is not a synthetic dataset; "
            "it will not be overwritten. Choose another output folder."
        )
    try:
        with open(manifest_path, encoding="utf-8") as f:
            recorded = json.load(f).get("parameters")
    except (OSError, ValueError, AttributeError) as e:
        raise OverwriteRefusedError(f"cannot read the synthetic dataset manifest {manifest_path}: {e}. {advice}") from e
    requested = json.loads(json.dumps(params))
    if recorded != requested:
        recorded = recorded if isinstance(recorded, dict) else {}
        diffs = [
            f"  {key}: existing {recorded.get(key, '<missing>')!r}, requested {requested.get(key, '<missing>')!r}"
            for key in sorted(set(recorded) | set(requested))
            if recorded.get(key) != requested.get(key)
        ]
        raise OverwriteRefusedError(
            f"the synthetic dataset in {out_dir} was generated with different parameters:\n"
            + "\n".join(diffs)
            + f"\n{advice}"
        )
    if not os.path.isfile(os.path.join(out_dir, DATALIST_NAME)):
        raise OverwriteRefusedError(f"the synthetic dataset in {out_dir} has no {DATALIST_NAME} (incomplete). {advice}")
    return True


def _save_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    # nibabel rather than MONAI's NibabelWriter, which keeps arrays and affines but not the files of the
    # datasets generated so far: it forces qform_code = sform_code = 1 (these files carry nibabel's 0
    # and 2), needs a header to keep the mm units, and resamples every array (resample=False fails in 2-D)
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
    grid = image_grid(dims, size)
    affine = image_affine(dims, size)
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
            anatomy = sample_anatomy(np.random.default_rng([seed, case_index, 0]), dims, size)
            entry: dict[str, Any] = {"case": case_id}
            labels: dict[str, np.ndarray] = {}
            for m, (name, contrast) in enumerate(zip(modalities, contrasts, strict=False)):
                points = grid
                if misalignment > 0 and m > 0:
                    points = misaligned_points(grid, np.random.default_rng([seed, case_index, 2, m]), misalignment)
                labels[name] = render_label(anatomy, points)
                distractors = render_distractors(anatomy, points, labels[name])
                image = render_image(
                    np.random.default_rng([seed, case_index, 1, m]),
                    labels[name],
                    distractors,
                    grid,
                    class_means=contrast.class_means,
                    noise_std=contrast.noise_std,
                    bias_strength=contrast.bias_strength,
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
