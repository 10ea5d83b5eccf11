# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Where a run writes by default (embedded dataset, run outputs, checkpoints): ``work_root``.

The bundle folder itself, unless it is read-only (a Model Zoo download in a shared location, a
read-only mount, ``chmod -R a-w``): then a folder of the user's cache, ``$MMSEG_BUNDLE_CACHE`` or
``$XDG_CACHE_HOME/monai_bundles/<name>`` (default ``~/.cache/monai_bundles/<name>``). A folder
counts as read-only when the process may not write it (``os.access``) or when it has no write
permission bit at all (so that ``chmod -R a-w`` also holds for root, whom ``os.access`` lets write
anywhere). ``--work_root``, ``--output_dir``, ``--ckpt_dir`` and ``--synthetic_dir`` override it.
"""

from __future__ import annotations

import os
import stat

__all__ = ["CACHE_ENV", "is_read_only", "writable_root"]

CACHE_ENV = "MMSEG_BUNDLE_CACHE"
NAME = "multimodal_mri_semisupervised_segmentation"


def is_read_only(path: str) -> bool:
    """True when ``path`` (an existing folder) cannot or should not be written."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # not there yet: it will be created where its parent allows
    return not os.access(path, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def writable_root(bundle_root: str, name: str = NAME) -> str:
    """``bundle_root`` when it may be written, else the user's cache folder for the bundle."""
    bundle_root = os.path.abspath(str(bundle_root))
    if not is_read_only(bundle_root):
        return bundle_root
    cache = os.environ.get(CACHE_ENV)
    if not cache:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache = os.path.join(base, "monai_bundles", name)
    return os.path.abspath(cache)
