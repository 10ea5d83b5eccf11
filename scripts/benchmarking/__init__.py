"""What the benchmark tools (``benchmark.py``, ``subset_benchmark.py``, ``misalignment_benchmark.py``,
``label_efficiency.py``, ``bench_threads.py`` and the ``bench_*`` measurements) share, one module per job:

- ``commands``: config files by name or path, config stacks, and the ``python -m monai.bundle run`` command line;
- ``runs``: running a command with its log and its accumulated time, failures, whole progress lines;
- ``statistics``: per-case Dice, mean and std over seeds, the paired difference and its bootstrap CI,
  the summary per method and labeled fraction;
- ``report``: the Markdown and JSON report of ``benchmark.py``, and reading earlier reports back;
- ``machine``: the description of the machine the figures were measured on.

The top-level ``scripts/`` folder is not a package: this one is imported with that folder on ``sys.path``
(see ``bundle_path.py``).
"""
