"""The one place where a tool of this folder makes the bundle's components importable.

There are two folders called ``scripts`` in this repository:

- this one, the repository's tools. It is not a package (no ``__init__.py``; ``tests/test_layout.py``
  keeps it so): ``python scripts/<tool>.py`` puts this folder first on ``sys.path``, so the tools and
  their packages (``benchmarking``, ``planning``, ``datalist_preparation``) and this module are
  imported by their own names. A tool loaded by its path instead (``importlib``, as the tests load
  them) needs this folder on ``sys.path`` already: ``tests/conftest.py`` puts it there;
- ``bundle/scripts``, the bundle's components. The bundle's configs name them ``scripts.<module>.<Name>``,
  as the Model Zoo layout has it, so that package keeps its name, and it is importable only with
  ``bundle/`` on ``sys.path``, ahead of anything else named ``scripts`` (e.g. an installed
  distribution's). No tool can reach it by a relative import, since this folder is not a package.

:func:`use_bundle_scripts` puts ``bundle/`` first on ``sys.path``; every tool calls it before it
imports ``scripts.<...>``, and no tool edits ``sys.path`` otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundle"
CONFIGS = BUNDLE / "configs"


def use_bundle_scripts() -> Path:
    """Put ``bundle/`` first on ``sys.path`` (moved there if it was already on it, so that ``import
    scripts`` finds the bundle's package before any other); returns ``bundle/``."""
    path = str(BUNDLE)
    if sys.path[:1] != [path]:
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    return BUNDLE
