# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
The bundle's own errors, how a ``monai.bundle run`` reports them, and its one boolean parser.

Every error the bundle raises about the user's input (datalist, case files, output folders, flags,
resume conflicts, checkpoint files, non-finite loss, failed inference cases, the settings and files a
run is given: :class:`InputError`, :class:`InputNotFoundError`, :class:`OverwriteRefusedError`)
derives from :class:`BundleError`; the last three also derive from the built-in error they stand for
(``ValueError``, ``FileNotFoundError``, ``FileExistsError``).
MONAI wraps errors of a component in ``RuntimeError: Failed to instantiate component ...``, so a
failing run ends in a long traceback whose last line hides the real message. :func:`install_error_hook`
(first entry of the configs' ``run``) replaces ``sys.excepthook``: when the cause chain of an uncaught
exception holds a :class:`BundleError`, only that error's message is printed, last, and the process
exits with status 1. Any other exception keeps Python's usual traceback. ``BUNDLE_TRACEBACK=1``
prints the full traceback before the message.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from monai.utils import str2bool

__all__ = [
    "BundleError",
    "FlagError",
    "InputError",
    "InputNotFoundError",
    "OverwriteRefusedError",
    "as_bool",
    "bundle_error_of",
    "check_bool",
    "install_error_hook",
]


class BundleError(Exception):
    """Marker base class of the errors the bundle reports concisely (see :func:`install_error_hook`)."""


class InputError(BundleError, ValueError):
    """A setting or input of the run (``--image``, ``--eval_split``, ...) cannot be used as given."""


class InputNotFoundError(BundleError, FileNotFoundError):
    """A file or folder the run was pointed at does not exist."""


class OverwriteRefusedError(BundleError, FileExistsError):
    """The run would write over a file it must keep (an input, another dataset)."""


class FlagError(BundleError, ValueError):
    """A boolean config id was given a value that is not true or false."""


def as_bool(value: Any, name: str = "flag") -> bool:
    """``value`` as a bool, with MONAI's ``str2bool`` (true/false, yes/no, t/f, y/n, 1/0, any case).

    The one parser of every boolean config id: a command line gives ``--validate_voxels false`` as
    the string ``'false'``, which Python's ``bool()`` would take as True.

    Raises:
        FlagError: naming ``--<name>`` and the value, for anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    try:
        return str2bool(str(value).strip(), raise_exc=True)
    except ValueError:
        raise FlagError(f"--{name} must be true or false (true/false, yes/no, 1/0), got {value!r}.") from None


def check_bool(value: Any, name: str) -> bool:
    """A component's boolean argument, already parsed: a bool, or else a ``TypeError``.

    The configs parse every boolean id once, where it enters (their ``flags`` ids, built with
    :func:`as_bool`), and hand components the parsed value; a component checks the type rather than
    parse again, so that a text ``"false"`` that bypassed ``flags`` fails loudly instead of reading as true.
    """
    if isinstance(value, bool):
        return value
    raise TypeError(f"{name} must be a bool (configs pass the parsed @flags#{name}), got {value!r}.")


def bundle_error_of(error: BaseException | None) -> BundleError | None:
    """The first :class:`BundleError` in the cause/context chain of ``error``, or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, BundleError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _hook(exc_type, exc, tb) -> None:  # noqa: ANN001 - sys.excepthook signature
    found = bundle_error_of(exc)
    if found is None:
        sys.__excepthook__(exc_type, exc, tb)
        return
    if os.environ.get("BUNDLE_TRACEBACK", "").strip().lower() in ("1", "true", "yes"):
        sys.__excepthook__(exc_type, exc, tb)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    sys.stderr.write(f"\nERROR: {type(found).__name__}: {found}\n")
    sys.stderr.flush()


def install_error_hook() -> bool:
    """Report uncaught bundle errors concisely (see the module docstring); idempotent. Returns True."""
    sys.excepthook = _hook
    return True
