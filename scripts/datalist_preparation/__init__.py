"""
The sub-commands of ``scripts/prepare_datalist.py`` (its command line), one module per dataset
family on one shared base:

- ``base``: what every sub-command shares: the common options, problem collection, the per-case
  split and labeled selection, file and label checks, label remapping and datalist writing;
- ``myops``: MyoPS 2020 (labeled and unlabeled case folders, MyoPS label codes remapped);
- ``brats``: BRATS 2013/2015 and BraTS 2021-2023 (one folder per case, naming per layout);
- ``msd``: Medical Segmentation Decathlon task folders (dataset.json, multi-channel images);
- ``amos``: AMOS 2022 (unpaired CT and MRI scans: one case per scan, or paired per split);
- ``folders``: any dataset with one folder per case and ``<case>_<modality>`` files, co-registered
  (one label per case) or on their own grids (one label per sequence), cases may lack sequences;
- ``folds``: cross-validation folds of a datalist already written (its test cases untouched).

The top-level ``scripts/`` folder is not a package: this one is imported with that folder on
``sys.path`` (see ``bundle_path.py``).
"""

from .amos import amos
from .base import PreparationError, select_labeled, split_cases
from .brats import brats2013, brats2021
from .folders import folders
from .folds import fold_split, folds
from .msd import msd
from .myops import MYOPS_LABELS, MYOPS_PATHOLOGY_LABELS, myops

__all__ = [
    "PreparationError",
    "MYOPS_LABELS",
    "MYOPS_PATHOLOGY_LABELS",
    "split_cases",
    "select_labeled",
    "myops",
    "brats2013",
    "brats2021",
    "msd",
    "amos",
    "folders",
    "fold_split",
    "folds",
]

#: the sub-commands of the command line, by name.
COMMANDS = {
    "myops": myops,
    "brats2013": brats2013,
    "brats2021": brats2021,
    "msd": msd,
    "amos": amos,
    "folders": folders,
    "folds": folds,
}
