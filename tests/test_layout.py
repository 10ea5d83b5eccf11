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


# the bundle's layers, in the order the data flows; a module may import its own layer and those before it
LAYERS = ["errors", "data", "networks", "losses", "run_management", "evaluation", "engine", "methods", "distributed"]


def _imported_layers(path, package_parts):
    """The bundle layers (first component under ``scripts``) that the module at ``path`` imports."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "scripts" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    root = BUNDLE / "scripts"
    problems = []
    checked = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        layer = rel[0]
        if layer == "__init__":
            continue
        package = ["scripts", *rel[:-1]]  # a module's package; an __init__'s own package
        assert layer in LAYERS, f"{path}: in no known layer; add it to LAYERS"
        for imported in _imported_layers(path, package):
            checked += 1
            if imported in LAYERS and LAYERS.index(imported) > LAYERS.index(layer):
                problems.append(f"{path.relative_to(BUNDLE)} ({layer}) imports {imported}")
    assert checked > 20  # the walk did see the package's imports
    assert not problems, "imports against the data flow:\n" + "\n".join(problems)


def test_layer_check_sees_relative_and_absolute_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from ..methods.cmc import X\nfrom scripts.distributed import y\nfrom . import z\nimport scripts.data\n")
    assert _imported_layers(module, ["scripts", "engine"]) == {"methods", "distributed", "engine", "data"}


def test_only_bundle_path_edits_sys_path_in_the_tools():
    """The tools reach the bundle's `scripts` package through scripts/bundle_path.py only (issue 25)."""
    import ast

    editors = []
    for path in sorted((REPO_ROOT / "scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                editors.append(str(path.relative_to(REPO_ROOT)))
                break
    assert editors == ["scripts/bundle_path.py"]


def test_tests_that_start_processes_are_marked_slow_through_helpers_and_fixtures(tmp_path):
    """The fast tier's marking (tests/conftest.py) follows helpers that start a process."""
    import importlib.util

    import conftest

    path = tmp_path / "fake_tests.py"
    path.write_text(
        "def run_bundle(args):\n    pass\n"
        "def _train(tmp):\n    return run_bundle([tmp])\n"
        "def _twice(tmp):\n    return [_train(tmp), _train(tmp)]\n"
        "def _pure(x):\n    return x + 1\n"
    )
    spec = importlib.util.spec_from_file_location("fake_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    starters = conftest._process_starters(module)
    assert {"_train", "_twice", "run_bundle"} <= starters and "_pure" not in starters


def test_python_files_stay_short_enough_to_read():
    """Issue 25: no module of the bundle or of the tools holds more than 500 lines (one job per module)."""
    long = {}
    for root in (BUNDLE / "scripts", REPO_ROOT / "scripts"):
        for path in root.rglob("*.py"):
            count = len(path.read_text(encoding="utf-8").splitlines())
            if count > 500:
                long[str(path.relative_to(REPO_ROOT))] = count
    assert not long, f"split these modules by job: {long}"


def test_train_config_keeps_logic_in_components():
    """Issue 25: train.yaml holds at most 25 `$` expressions (imports included) and defines no function."""
    import yaml

    expressions = []

    def walk(value):
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.startswith("$"):
            expressions.append(value)

    walk(yaml.safe_load((BUNDLE / "configs" / "train.yaml").read_text(encoding="utf-8")))
    assert len(expressions) <= 25, f"{len(expressions)} expressions: move logic into named components"
    assert not [e for e in expressions if "lambda" in e or "def " in e]
