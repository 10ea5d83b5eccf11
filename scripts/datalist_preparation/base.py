"""
What every sub-command of ``scripts/prepare_datalist.py`` shares.

A sub-command is written as ``def name(run: Preparation, <its own options>) -> str`` and made a
command by :func:`sub_command`, which adds the options every sub-command takes (:class:`Options`).
:class:`Preparation` is one run: it collects every problem (and note, and input file), splits the
labeled cases, refuses unsafe outputs, and writes the remapped labels and the datalist.
"""

from __future__ import annotations

import dataclasses
import gzip
import inspect
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bundle_path import use_bundle_scripts

from .case_files import label_codes

use_bundle_scripts()
from scripts.data.datalist import select_labeled  # noqa: E402
from scripts.run_management.atomic_checkpoint import atomic_write_bytes  # noqa: E402
from scripts.errors import FlagError, as_bool  # noqa: E402

__all__ = [
    "KEPT_CODES",
    "Options",
    "Preparation",
    "PreparationError",
    "as_label_map",
    "as_list",
    "select_labeled",
    "split_cases",
    "sub_command",
]

#: the datalist's ``preparation.label_codes`` when labels are referenced in place.
KEPT_CODES = "kept as in the input files"


class PreparationError(ValueError):
    """The dataset cannot be prepared; the message lists every problem found, one per line."""

    def __init__(self, problems: Sequence[str], command: str) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        plural = "s" if count != 1 else ""
        header = f"{command}: cannot prepare the datalist ({count} problem{plural}); nothing written:"
        super().__init__("\n".join([header] + [f"  - {p}" for p in self.problems]))


# ---------------------------------------------------------------------------------------------
# the options of every sub-command
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    """
    The options every sub-command takes. On the command line ``data_dir`` and ``output`` come
    first, then the sub-command's own options, then the others (see :func:`sub_command`).
    """

    data_dir: str
    output: str | None = None
    num_validation: int | None = None
    num_testing: int | None = None
    validation_fraction: float | None = None
    testing_fraction: float | None = None
    labeled_fraction: float = 1.0
    seed: int = 0
    overwrite: bool = False
    absolute_paths: bool = False


_LEADING_OPTIONS = ("data_dir", "output")


def _parameter(field: dataclasses.Field) -> inspect.Parameter:
    default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
    return inspect.Parameter(
        field.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=field.type
    )


def sub_command(body: Callable[..., str]) -> Callable[..., str]:
    """
    The fire command ``body.__name__`` made of ``body(run: Preparation, <its own options>)``.

    fire builds the command line and ``--help`` from the signature and docstring of what it calls,
    so the returned function carries ``body``'s docstring and the signature ``(data_dir, output,
    <body's own options>, <the other Options>)``, written once here instead of in every
    sub-command. Options annotated ``bool`` are parsed in signature order, the first bad one
    failing the command, since fire passes ``true``/``false``/``yes``/``no`` on as text.
    """
    command = body.__name__
    declared = inspect.signature(body)
    own = list(declared.parameters.values())[1:]  # the first one is the run
    fields = dataclasses.fields(Options)
    leading = [_parameter(f) for f in fields if f.name in _LEADING_OPTIONS]
    trailing = [_parameter(f) for f in fields if f.name not in _LEADING_OPTIONS]
    signature = inspect.Signature(leading + own + trailing, return_annotation=declared.return_annotation)
    flags = {name for name, p in signature.parameters.items() if p.annotation in ("bool", bool)}
    # fire turns a number-like value into a number: a folder named 2024 must stay a path
    paths = {name for name, p in signature.parameters.items() if p.annotation in ("str", "str | None", str)}

    def run_command(*args: Any, **kwargs: Any) -> str:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = {k: _to_bool(v, k, command) if k in flags else v for k, v in bound.arguments.items()}
        values.update({k: str(v) for k, v in values.items() if k in paths and isinstance(v, int) and v is not True})
        options = Options(**{f.name: values.pop(f.name) for f in fields})
        return body(Preparation(command, options), **values)

    run_command.__name__ = run_command.__qualname__ = command
    run_command.__module__ = body.__module__
    run_command.__doc__ = body.__doc__
    run_command.__signature__ = signature
    return run_command


def _to_bool(value: Any, name: str, command: str) -> bool:
    """A flag given as a bool, or on the command line as true/false/yes/no/1/0 (fire keeps those as
    text), parsed by the bundle's one boolean parser (``scripts.errors.as_bool``)."""
    try:
        return as_bool(value, name)
    except FlagError as e:
        raise PreparationError([str(e).rstrip(".")], command) from None


def _check_common(labeled_fraction: Any, seed: Any, problems: list[str]) -> None:
    if (
        isinstance(labeled_fraction, bool)
        or not isinstance(labeled_fraction, (int, float))
        or not (0.0 < labeled_fraction <= 1.0)
    ):
        problems.append(f"--labeled_fraction must be in (0, 1], got {labeled_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"--seed must be a whole number, got {seed!r}")


def as_list(value: Any, name: str, problems: list[str]) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        problems.append(f"--{name} must be a non-empty list of names, got {value!r}")
        return None
    if len(set(value)) != len(value):
        problems.append(f"--{name} has duplicates: {list(value)!r}")
    return list(value)


def as_label_map(value: Any, problems: list[str]) -> dict[int, int]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            problems.append(f'--label_map must be a mapping such as "{{4: 3}}", got {value!r}')
            return {}
    if not isinstance(value, dict):
        problems.append(f'--label_map must be a mapping such as "{{4: 3}}", got {value!r}')
        return {}
    try:
        mapping = {int(k): int(v) for k, v in value.items()}
    except (TypeError, ValueError):
        problems.append(f"--label_map keys and values must be whole numbers, got {value!r}")
        return {}
    if any(not 0 <= v <= 255 for v in mapping.values()):
        problems.append(f"--label_map values must be in 0..255, got {value!r}")
    return mapping


# ---------------------------------------------------------------------------------------------
# splitting
# ---------------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_cases(case_ids: Sequence[str], num_validation: int, num_testing: int, seed: int) -> dict[str, list[str]]:
    """
    Split case ids (whole cases) into ``training`` / ``validation`` / ``testing``.

    The sorted ids are permuted with ``numpy.random.default_rng(seed)``: the first ``num_testing``
    go to testing, the next ``num_validation`` to validation, the rest to training. The result
    depends only on the set of ids and the seed (not on their order), and for one seed the testing
    cases do not depend on ``num_validation``. Each returned list is sorted.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids")
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    testing = shuffled[:num_testing]
    validation = shuffled[num_testing : num_testing + num_validation]
    training = shuffled[num_testing + num_validation :]
    return {"training": sorted(training), "validation": sorted(validation), "testing": sorted(testing)}


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def _write_label(src: str, dst: str, mapping: dict[int, int]) -> None:
    """Write ``src`` with codes replaced by ``mapping`` (codes not in it kept) to ``dst``, as uint8 NIfTI.

    The affine and header of ``src`` are kept; the gzip stream carries no time stamp, so the same
    input gives the same bytes.
    """
    import nibabel as nib

    problems: list[str] = []
    loaded = label_codes(src, src, problems)
    if loaded is None:
        raise PreparationError(problems, "write label")
    img, data = loaded
    out = data.copy()
    for code, value in mapping.items():
        out[data == code] = value
    if out.min() < 0 or out.max() > 255:
        raise PreparationError([f"{src}: remapped codes outside 0..255"], "write label")
    out = out.astype(np.uint8)
    if isinstance(img, nib.Nifti1Image):
        new = type(img)(out, img.affine, img.header)
    else:
        new = nib.Nifti1Image(out, img.affine)
    new.set_data_dtype(np.uint8)
    new.header.set_slope_inter(1.0, 0.0)
    raw = new.to_bytes()
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    atomic_write_bytes(gzip.compress(raw, compresslevel=6, mtime=0) if dst.endswith(".gz") else raw, dst)


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(path)))


# ---------------------------------------------------------------------------------------------
# one run of a sub-command
# ---------------------------------------------------------------------------------------------


class Preparation:
    """
    One run of sub-command ``command`` with ``options``: what it found wrong (``problems``, all
    reported at once before anything is written), what it tells the user (``notes``) and the
    files it read (``inputs``, never overwritten).
    """

    def __init__(self, command: str, options: Options) -> None:
        self.command = command
        self.options = options
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.inputs: list[str] = []
        _check_common(options.labeled_fraction, options.seed, self.problems)
        self.data_dir = os.path.abspath(os.path.expanduser(str(options.data_dir)))
        self.output = os.path.abspath(
            os.path.expanduser(options.output if options.output else os.path.join(self.data_dir, "datalist.json"))
        )

    def found_data_dir(self) -> bool:
        """Whether the data folder exists (a problem is recorded when it does not)."""
        if os.path.isdir(self.data_dir):
            return True
        self.problems.append(f"data folder not found: {self.data_dir}")
        return False

    # ------------------------------------------------------------------ splitting
    def split_counts(self, n: int, what: str = "labeled cases") -> tuple[int, int]:
        """Numbers of validation and testing cases out of ``n`` (problems recorded when invalid)."""
        options, problems = self.options, self.problems
        counts = []
        for name, count, fraction in (
            ("validation", options.num_validation, options.validation_fraction),
            ("testing", options.num_testing, options.testing_fraction),
        ):
            if count is not None and fraction is not None:
                problems.append(f"give --num_{name} or --{name}_fraction, not both")
                counts.append(0)
                continue
            if count is not None:
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    problems.append(f"--num_{name} must be a whole number >= 0, got {count!r}")
                    counts.append(0)
                    continue
                counts.append(count)
                continue
            fraction = 0.2 if fraction is None else fraction
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
                problems.append(f"--{name}_fraction must be in [0, 1), got {fraction!r}")
                counts.append(0)
                continue
            counts.append(_round_half_up(fraction * n))
        n_val, n_test = counts
        # every case in `testing` (no validation) is an external test set: a datalist to evaluate on only
        external_test_set = n_val == 0 and n_test == n and not problems
        if n and n_val + n_test >= n and not external_test_set:
            problems.append(
                f"{n_val} validation + {n_test} testing cases leave no training case out of {n} {what}; "
                "lower --num_validation/--num_testing (or the fractions)"
            )
        return n_val, n_test

    def split(self, case_ids: Sequence[str], num_validation: int, num_testing: int) -> dict[str, list[str]]:
        """:func:`split_cases`, then the training cases beyond ``labeled_fraction`` moved to ``unlabeled``."""
        parts = split_cases(case_ids, num_validation, num_testing, self.options.seed)
        parts["training"], parts["unlabeled"] = select_labeled(
            parts["training"], self.options.labeled_fraction, self.options.seed
        )
        return parts

    # ------------------------------------------------------------------ writing
    def check_outputs(self, label_targets: Sequence[str] = ()) -> None:
        """Refuse to overwrite an input file, or an existing output without ``--overwrite``; then
        fail with every problem recorded so far, if any."""
        input_set = {_real(p) for p in self.inputs}
        for target, what in [(self.output, "datalist")] + [(t, "label") for t in label_targets]:
            if _real(target) in input_set:
                self.problems.append(
                    f"output {what} {target} is one of the input files; choose another --output/--label_dir"
                )
            elif os.path.isdir(target):
                self.problems.append(f"output {what} {target} is a folder")
            elif os.path.exists(target) and not self.options.overwrite:
                self.problems.append(f"output {what} {target} already exists; pass --overwrite to replace it")
        if self.problems:
            raise PreparationError(self.problems, self.command)

    def rel(self, path: str) -> str:
        """``path`` as the datalist writes it: absolute, or relative to the datalist's folder."""
        path = os.path.abspath(path)
        if self.options.absolute_paths:
            return path
        try:
            return os.path.relpath(path, os.path.dirname(self.output))
        except ValueError:  # another drive (Windows)
            return path

    def header(self, name: str, description: str) -> dict[str, Any]:
        """The first keys of the datalist."""
        return {"name": name, "description": description, "data_dir": self.data_dir}

    def provenance(self, **details: Any) -> dict[str, Any]:
        """The datalist's ``preparation`` entry: how it was made."""
        options = self.options
        return {
            "tool": f"scripts/prepare_datalist.py {self.command}",
            "seed": options.seed,
            "labeled_fraction": options.labeled_fraction,
            **details,
        }

    def write(self, content: dict) -> str:
        """Write the datalist and print a summary and the notes; return its path."""
        os.makedirs(os.path.dirname(self.output), exist_ok=True)
        atomic_write_bytes((json.dumps(content, indent=2) + "\n").encode("utf-8"), self.output)
        counts = ", ".join(f"{s} {len(content.get(s, []))}" for s in ("training", "unlabeled", "validation", "testing"))
        print(f"{self.command}: wrote {self.output} ({counts}; modalities {content['modalities']})")
        for note in self.notes:
            print(f"{self.command}: note: {note}")
        return self.output

    # ------------------------------------------------------------------ one label on the images' grid
    def assemble(
        self,
        name: str,
        description: str,
        modalities: list[str],
        labeled: dict[str, dict],
        unlabeled: dict[str, dict],
        labels: dict[str, int] | None,
        label_mapping: dict[int, int] | None = None,
        label_dir: str | None = None,
        **details: Any,
    ) -> str:
        """
        Split, check the outputs, write the remapped labels (when ``label_mapping``) and the
        datalist of a dataset with one label per case on the grid shared by its images, or (without
        ``label_mapping``) one label per modality on that modality's own grid.

        ``labeled`` / ``unlabeled``: case id -> {"images": {modality or "image": path}, "label": path
        or {modality: path}}; a case may lack modalities (its image keys are those it has).
        ``labels``: the datalist's class names and values (None: not written). ``details``: more
        entries of the datalist's ``preparation`` record.
        """
        n_val, n_test = self.split_counts(len(labeled))
        if not labeled:
            self.problems.append(f"no labeled case found in {self.data_dir}")
        if label_dir:
            label_dir = os.path.abspath(os.path.expanduser(label_dir))
        else:
            label_dir = os.path.join(os.path.dirname(self.output), "labels")
        splits: dict[str, list[str]] = {"training": [], "unlabeled": [], "validation": [], "testing": []}
        if labeled and not self.problems:
            splits = self.split(list(labeled), n_val, n_test)
        # labels referenced by the datalist: remapped copies, or the input files in place
        label_of: dict[str, str] = {}
        for split in ("training", "validation", "testing"):
            for case in splits[split]:
                src = labeled[case]["label"]
                if label_mapping and not isinstance(src, str):
                    raise ValueError("label_mapping needs one label file per case")
                label_of[case] = os.path.join(label_dir, f"{case}_label.nii.gz") if label_mapping else src
        self.check_outputs(list(label_of.values()) if label_mapping else [])

        if label_mapping:
            for case, dst in label_of.items():
                _write_label(labeled[case]["label"], dst, label_mapping)

        def entry(case: str, images: dict[str, str], label: str | dict[str, str] | None) -> dict:
            item = {"case": case}
            item.update({k: self.rel(p) for k, p in images.items()})
            if isinstance(label, dict):
                item["label"] = {k: self.rel(p) for k, p in label.items()}
            elif label:
                item["label"] = self.rel(label)
            return item

        content: dict[str, Any] = self.header(name, description)
        content["modalities"] = modalities
        if labels is not None:
            content["labels"] = labels
        content["preparation"] = self.provenance(
            num_validation=n_val,
            num_testing=n_test,
            label_codes={str(k): v for k, v in sorted(label_mapping.items())} if label_mapping else KEPT_CODES,
            **details,
        )
        content["training"] = [entry(c, labeled[c]["images"], label_of[c]) for c in splits["training"]]
        content["unlabeled"] = [entry(c, labeled[c]["images"], None) for c in splits["unlabeled"]] + [
            entry(c, unlabeled[c]["images"], None) for c in sorted(unlabeled)
        ]
        content["validation"] = [entry(c, labeled[c]["images"], label_of[c]) for c in splits["validation"]]
        content["testing"] = [entry(c, labeled[c]["images"], label_of[c]) for c in splits["testing"]]
        return self.write(content)
