"""Repository layout: the top-level `scripts/` tools must not shadow the bundle's `scripts` package."""

from __future__ import annotations

import subprocess
import sys

from bundle_runner import BUNDLE, REPO_ROOT


def test_top_level_scripts_is_not_a_package():
    assert not (REPO_ROOT / "scripts" / "__init__.py").exists()
    assert (BUNDLE / "scripts" / "__init__.py").is_file()


def test_bundle_scripts_wins_from_repository_root():
    # what `monai.bundle run` does: cwd (the repository root) first, then the bundle root
    code = (
        "import sys; sys.path.insert(1, %r); import scripts, scripts.methods; print(scripts.__file__)" % str(BUNDLE)
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(BUNDLE / "scripts" / "__init__.py")
