"""The fingerprint of a dataset: what the planning rules (``rules.py``) decide from.

Intensity and class statistics of the labeled cases come from MONAI Auto3DSeg's ``DataAnalyzer``
(per case: each modality's intensity percentiles over the image and over the foreground, and each
label's voxel share). What it does not record is read here from the files themselves:

- the geometry of every training-pool case, labeled or not, from the NIfTI header alone (shape,
  voxel size, RAS order, stored data type);
- where the foreground lies: per labeled case and stored axis, the largest distance (mm) of a
  foreground voxel from the image centre, and the share of slices along each axis that hold any
  foreground;
- where the images have content (``content_extent``): per case, the bounding box of the voxels above their
  sequence's minimum in any of its sequences (skull-stripped or zero-padded data leave much of the image
  at a constant background), and per labeled case how many foreground voxels lie outside that box;
- which sequences show each class (``visibility``): per labeled case with two or more sequences on the
  label's grid, class and sequence, how well the class's intensities separate from those of a ring
  around it (``class_visibility``).

The fingerprint is a plain JSON-able dict (so that tests can write one by hand):

    {"modalities": [...], "num_classes": int, "class_names": [the datalist's declared labels] | None,
     "cases": [{"case", "labeled", "shape", "spacing", "ras_shape", "ras_spacing",
                "fg_halfwidth_mm": [per stored axis] | None, "fg_slice_share": [per stored axis] | None,
                "content_shape": [per stored axis], "content_ras_shape": [per RAS axis],
                "fg_outside_content": foreground voxels outside the content box (labeled cases),
                "class_share": {"1": share of the image's voxels, ...} | None,
                "largest_component_share": {"1": share of the class's voxels in its largest component, ...},
                "visibility": {"1": [per modality: how well it shows the class, or None where missing], ...} | None}],
     "intensity": {modality: {"dtype": "uint8", "p00_5", "p99_5", "mean", "std" (all voxels, medians
                   over cases), "fg_p00_5", "fg_p99_5", "fg_mean", "fg_std" (foreground voxels, pooled)}}}
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

__all__ = ["dataset_fingerprint", "case_geometry", "label_geometry", "class_visibility", "content_extent"]

# the ring around a class that its intensities are compared with, in mm (at least one voxel)
RING_MM = 5.0


def case_geometry(path: str) -> dict[str, Any]:
    """Shape, voxel size (stored and RAS axis order) and data type of an image, from its header."""
    img = nib.load(path)
    shape = [int(s) for s in img.shape[:3]]
    spacing = [float(s) for s in np.sqrt((img.affine[:3, :3] ** 2).sum(0))]
    # io_orientation's row i gives the RAS axis of stored axis i; inverted, the stored axes in RAS order
    order = [int(a) for a in nib.io_orientation(img.affine)[:, 0]]
    ras_axes = [order.index(r) for r in range(3)] if sorted(order) == [0, 1, 2] else [0, 1, 2]
    return {
        "shape": shape,
        "ras_axes": ras_axes,
        "spacing": [round(s, 6) for s in spacing],
        "ras_shape": [shape[a] for a in ras_axes],
        "ras_spacing": [round(spacing[a], 6) for a in ras_axes],
        "dtype": str(img.get_data_dtype()),
    }


def content_extent(paths: Sequence[str | None], label_path: str | None = None) -> dict[str, Any]:
    """The bounding box of the voxels above their own file's minimum in any of ``paths`` (the files of one
    case on one grid; a file of another shape is not counted), as its size per stored axis
    (``content_shape``), and, with ``label_path``, how many foreground voxels of the label lie outside
    it (``fg_outside_content``). An image with no such voxel keeps its whole shape. This is the box that
    planned.yaml's ``crop_to_content`` crops to (``scripts.data.image_content.above_background``)."""
    from scripts.data.image_content import above_background

    shape, mask = None, None
    for path in paths:
        if not path:
            continue
        data = np.asarray(nib.load(path).dataobj)
        data = data.reshape(data.shape[:3] + (-1,)) if data.ndim > 3 else data[..., None]
        if shape is None:
            shape = data.shape[:3]
        if data.shape[:3] != shape:
            continue
        content = above_background(np.moveaxis(data, -1, 0)).any(axis=0)
        mask = content if mask is None else mask | content
    if mask is None:
        raise ValueError(f"no image among {list(paths)}")
    box = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(present[0]), int(present[-1]) + 1) if present.size else (0, shape[axis]))
    out: dict[str, Any] = {"content_shape": [hi - lo for lo, hi in box]}
    if label_path:
        label = np.asarray(nib.load(label_path).dataobj)
        fg = label.reshape(label.shape[:3]) > 0
        if fg.shape == shape:
            inside = fg[tuple(slice(lo, hi) for lo, hi in box)].sum()
            out["fg_outside_content"] = int(fg.sum() - inside)
    return out


def label_geometry(path: str, spacing: Sequence[float]) -> dict[str, Any]:
    """Where the foreground of a label map lies (see the module docstring) and each class's voxel share."""
    label = np.asarray(nib.load(path).dataobj)
    label = label.reshape(label.shape[:3])
    fg = label > 0
    classes, counts = np.unique(label, return_counts=True)
    share = {str(int(c)): float(n) / label.size for c, n in zip(classes, counts) if c > 0}
    # the share of each class's voxels in its largest connected component (full connectivity, as
    # MONAI's KeepLargestConnectedComponent by default)
    largest = {}
    for c in classes[classes > 0]:
        components, n = ndimage.label(label == c, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(components.ravel())[1:]
        largest[str(int(c))] = round(float(sizes.max()) / float(sizes.sum()), 4) if n else 1.0
    if not fg.any():
        return {"fg_halfwidth_mm": None, "fg_slice_share": None, "class_share": share, "largest_component_share": largest}
    halfwidth, slice_share = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(fg.any(axis=other))
        centre = (label.shape[axis] - 1) / 2.0
        halfwidth.append(float(max(abs(present[0] - centre), abs(present[-1] - centre)) + 0.5) * float(spacing[axis]))
        slice_share.append(float(len(present)) / label.shape[axis])
    return {"fg_halfwidth_mm": [round(h, 3) for h in halfwidth], "fg_slice_share": [round(s, 4) for s in slice_share],
            "class_share": share, "largest_component_share": largest}


def class_visibility(images: Sequence[np.ndarray | None], label: np.ndarray, spacing: Sequence[float],
                     ring_mm: float = RING_MM) -> dict[str, list[float | None]]:
    """How well each image shows each class of ``label`` (all on one grid): ``|2 AUC - 1|`` of the class's
    voxel intensities against those of the voxels within ``ring_mm`` around it (its other side, whatever
    class). AUC is the Mann-Whitney probability that a class voxel is brighter than a ring voxel, so the
    score is 0 when the two cannot be told apart and 1 when they never overlap, either way round; ranks
    make it independent of any monotone intensity scaling. ``None`` for a missing image (``None``)."""
    out: dict[str, list[float | None]] = {}
    spacing = [float(s) for s in spacing]
    reach = max(float(ring_mm), 1.01 * min(spacing))
    for c in np.unique(label):
        if c <= 0:
            continue
        mask = label == c
        # only the class's bounding box grown by the ring is needed: large volumes stay cheap
        where = np.nonzero(mask)
        box = tuple(slice(max(0, int(w.min()) - int(np.ceil(reach / s)) - 1), int(w.max()) + int(np.ceil(reach / s)) + 2)
                    for w, s in zip(where, spacing))
        inside = mask[box]
        ring = ~inside & (ndimage.distance_transform_edt(~inside, sampling=spacing) <= reach)
        scores: list[float | None] = []
        for image in images:
            if image is None or not ring.any():
                scores.append(None)
                continue
            a, b = image[box][inside].astype(np.float64), image[box][ring].astype(np.float64)
            # scipy's U of the first sample (midranks for ties) over all pairs is the AUC; the p-value is unused
            auc = stats.mannwhitneyu(a, b, method="asymptotic").statistic / (a.size * b.size)
            scores.append(round(abs(2.0 * auc - 1.0), 4))
        out[str(int(c))] = scores
    return out


def _case_visibility(files: Sequence[str | None], label_path: str, spacing: Sequence[float]) -> dict | None:
    """:func:`class_visibility` of a case's sequences, when two or more lie on its label's grid."""
    if sum(1 for p in files if p) < 2:
        return None
    label = np.asarray(nib.load(label_path).dataobj)
    label = label.reshape(label.shape[:3])
    images = []
    for path in files:
        image = None if not path else np.asarray(nib.load(path).dataobj)
        if image is not None and (image.shape[:3] != label.shape or image.size != label.size):
            return None  # not on the label's grid (the datalist checks say why); nothing to compare here
        images.append(None if image is None else image.reshape(label.shape))
    return class_visibility(images, label, spacing)


def _analyze_intensities(cases: list[dict], modalities: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per modality: medians over cases of the image percentiles, and foreground statistics, from
    MONAI's DataAnalyzer on the labeled cases that have that modality (one run per modality, so that
    cases lacking a sequence, and sequences on their own grids with their own labels, count too)."""
    from monai.apps.auto3dseg import DataAnalyzer

    per_modality = []
    for m, name in enumerate(modalities):
        usable = [{"image": [c["image"][m]], "label": c["label"], "fold": 0} for c in cases
                  if isinstance(c.get("image"), list) and c.get("label") and c["image"][m]]
        if not usable:
            raise ValueError(f"the datalist has no labeled case with a {name!r} file to take its intensities from.")
        with tempfile.TemporaryDirectory() as tmp:
            analyzer = DataAnalyzer({"training": usable}, dataroot="", output_path=os.path.join(tmp, "stats.yaml"),
                                    device="cpu", worker=0, fmt="yaml")
            per_modality.append(analyzer.get_all_case_stats()["stats_by_cases"])
    out: dict[str, dict[str, float]] = {}
    for m, name in enumerate(modalities):
        stats = per_modality[m]
        image = [s["image_stats"]["intensity"][0] for s in stats]
        fg = [s["image_foreground_stats"]["intensity"][0] for s in stats]
        entry = {key: float(np.median([i[key] for i in image])) for key in ("percentile_00_5", "percentile_99_5", "mean", "stdev")}
        # foreground: the pooled mean and spread, and the extreme-most case percentiles' medians
        fg_mean = float(np.mean([f["mean"] for f in fg]))
        fg_var = float(np.mean([f["stdev"] ** 2 + (f["mean"] - fg_mean) ** 2 for f in fg]))
        out[name] = {
            "p00_5": entry["percentile_00_5"], "p99_5": entry["percentile_99_5"], "mean": entry["mean"], "std": entry["stdev"],
            "fg_p00_5": float(np.median([f["percentile_00_5"] for f in fg])),
            "fg_p99_5": float(np.median([f["percentile_99_5"] for f in fg])),
            "fg_mean": fg_mean, "fg_std": float(np.sqrt(fg_var)),
        }
    return out


def dataset_fingerprint(
    datalist_file: str, modalities: Sequence[str] | None = None, allow_missing_modalities: bool = False,
    own_grids: bool = False,
) -> dict[str, Any]:
    """The fingerprint of the training pool (``training`` and ``unlabeled``) of a bundle datalist, read
    as the run reads it (``allow_missing_modalities``, ``own_grids``: see ``scripts.data.datalist``; on
    own grids every sequence is a case of its own, with its own geometry and label)."""
    import json

    from bundle_path import use_bundle_scripts

    use_bundle_scripts()
    from scripts.data.datalist import declared_names, load_datalist

    if not os.path.isfile(datalist_file):
        raise FileNotFoundError(f"datalist file not found: {datalist_file}")
    with open(datalist_file) as f:
        declared = json.load(f).get("modalities")
    names = list(modalities or declared or [])
    datalist = load_datalist(datalist_file, modalities=names or None,
                             allow_missing_modalities=allow_missing_modalities, own_grids=own_grids)
    if not names:
        raise ValueError(f"{datalist_file}: give the modalities (a top-level 'modalities' list, or --modalities).")
    pool = [dict(c, labeled=True) for c in datalist["training"] if c.get("label")]
    pool += [dict(c, labeled=False) for c in datalist["training"] if not c.get("label")]
    pool += [dict(c, labeled=False) for c in datalist.get("unlabeled", [])]
    cases, dtypes = [], {m: set() for m in names}
    num_classes = 1
    for c in pool:
        files = c["image"] if isinstance(c["image"], list) else [c["image"]]
        first = next(p for p in files if p)
        entry = {"case": c["case"], "labeled": c["labeled"], **case_geometry(first)}
        for m, path in zip(names, files):
            if path:
                dtypes[m].add(case_geometry(path)["dtype"] if path != first else entry["dtype"])
        entry.pop("dtype")
        extent = content_extent(files, c["label"] if c["labeled"] else None)
        ras_axes = entry.pop("ras_axes")
        entry.update(extent, content_ras_shape=[extent["content_shape"][a] for a in ras_axes])
        if c["labeled"]:
            entry.update(label_geometry(c["label"], entry["spacing"]))
            entry["visibility"] = _case_visibility(files, c["label"], entry["spacing"])
            num_classes = max([num_classes] + [int(k) + 1 for k in entry["class_share"]])
        cases.append(entry)
    intensity = _analyze_intensities([c for c in pool if c["labeled"]], names)
    for m in names:
        intensity[m]["dtype"] = "/".join(sorted(dtypes[m]))
    class_names = declared_names(None, datalist_file, "labels", []) or None
    return {"modalities": names, "num_classes": num_classes, "class_names": class_names, "cases": cases,
            "intensity": intensity}
