"""Run management: resuming, checkpoints (atomic writes, checked loading), the output folders and the
work root, metrics.json, experiment tracking, and the checks made before a run starts."""

from .atomic_checkpoint import AtomicCheckpointSaver, atomic_save
from .metrics_writer import ValidationMetricsWriter
from .output_folders import OutputFolderError, check_output_folders
from .resume import EvaluatorBestMetric, RandomStates, ResumeTraining
