import ast
import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))
# the tools' folder, for the tools the tests load by path and their packages (see scripts/bundle_path.py);
# appended, it shadows nothing installed
sys.path.append(str(Path(__file__).resolve().parents[1] / "scripts"))

# ---------------------------------------------------------------- the fast tier: pytest -m "not slow"
# A test is `slow` when it starts a process (a `monai.bundle` run, a tool): directly, through a helper of
# its module, or through a fixture. The marks are found from the code, so a new test is marked without
# anyone remembering to; a test can also be marked by hand (`@pytest.mark.slow`, for long in-process
# work). In the fast tier, a test that starts a process anyway fails and says to mark it.
_TESTS = Path(__file__).resolve().parent
_STARTS_PROCESSES = ("run_bundle", "subprocess", "Popen", "run_tool", "check_output")


def _called_names(func) -> set[str]:
    """Names a function's body calls (``f(...)`` and ``x.f(...)``) or reads (``subprocess``)."""
    try:
        tree = ast.parse(_dedented(func))
    except (OSError, TypeError, SyntaxError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
    return names


def _dedented(func) -> str:
    import textwrap

    return textwrap.dedent(inspect.getsource(func))


def _process_starters(module) -> set[str]:
    """Names of ``module``'s functions that start a process, directly or through each other."""
    functions = {n: f for n, f in vars(module).items() if inspect.isfunction(f)}
    calls = {n: _called_names(f) for n, f in functions.items()}
    slow = set(_STARTS_PROCESSES)
    changed = True
    while changed:
        changed = False
        for name, names in calls.items():
            if name not in slow and names & slow:
                slow.add(name)
                changed = True
    return slow


def _starts_processes(item, starters: set[str]) -> bool:
    functions = [item.function]
    for defs in item._fixtureinfo.name2fixturedefs.values():  # the fixtures the tests define (not pytest's)
        functions += [d.func for d in defs if _TESTS in Path(inspect.getfile(d.func)).resolve().parents]
    functions = [f for f in functions if f is not _fast_tests_start_no_process.__wrapped__]
    return any(_called_names(f) & starters for f in functions)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: starts a process (a monai.bundle run, a tool) or trains at length; "
        "`pytest -m 'not slow'` is the fast tier"
    )


def pytest_collection_modifyitems(config, items):
    starters: dict[str, set[str]] = {}
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        module = item.module
        if module.__name__ not in starters:
            starters[module.__name__] = _process_starters(module)
        if _starts_processes(item, starters[module.__name__]):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_process(request, monkeypatch):
    """In a test not marked slow, starting a Python process is an error that names the fix."""
    if request.node.get_closest_marker("slow") is not None:
        return
    import os
    import subprocess

    popen = subprocess.Popen

    def refuse_python(args, *rest, **kwargs):
        program = args[0] if isinstance(args, (list, tuple)) and args else str(args).split(" ")[0]
        if "python" in os.path.basename(str(program)):  # a bundle run or a tool; `git` and the like may run
            raise AssertionError(
                f"{request.node.nodeid} starts a Python process: mark it @pytest.mark.slow (tests/conftest.py)"
            )
        return popen(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", refuse_python)
