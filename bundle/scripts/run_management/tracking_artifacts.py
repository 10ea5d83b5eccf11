# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""
Repairs the path of the executed-config artifact that ``--tracking mlflow`` logs.

MONAI 1.6 (``ConfigWorkflow``) writes the executed config to ``<output_dir>/config_<time>.json`` and
gives MLflow's handler the artifact path ``parser["output_dir"] + " + '/config_<time>.json'"``, an
expression only when ``output_dir`` is one. With ``--output_dir /runs/x`` (a plain path) the
artifact becomes the literal ``/runs/x + '/config_<time>.json'``, which does not exist, and no config
is logged. :class:`ExecutedConfigArtifact` finds the ``MLFlowHandler`` s attached to the engine when
it starts and turns such a literal back into the path MONAI wrote the file to.
"""

from __future__ import annotations

import os
import re

from ignite.engine import Engine, Events

__all__ = ["ExecutedConfigArtifact", "repair_artifact_path"]

# "<dir> + '<name>'" (or with double quotes), as MONAI concatenates a plain output_dir
_LITERAL_CONCAT = re.compile(r"""^(?P<dir>.+?) \+ (?P<q>['"])(?P<name>[^'"]+)(?P=q)$""")


def repair_artifact_path(path: object) -> object:
    """``"<dir> + '/<name>'"`` -> ``<dir>/<name>``; anything else unchanged."""
    if not isinstance(path, str) or os.path.exists(path):
        return path
    match = _LITERAL_CONCAT.match(path.strip())
    if match is None:
        return path
    return os.path.join(match.group("dir"), match.group("name").lstrip("/\\"))


class ExecutedConfigArtifact:
    """Handler (first in the trainer's handlers) that repairs the artifacts of MLflow handlers."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from monai.handlers import MLFlowHandler

        for handlers in getattr(engine, "_event_handlers", {}).values():
            for entry in handlers:
                owner = getattr(entry[0], "__self__", None)
                if isinstance(owner, MLFlowHandler) and owner.artifacts:
                    owner.artifacts = tuple(repair_artifact_path(a) for a in owner.artifacts)
