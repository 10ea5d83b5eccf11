from .atomic_checkpoint import AtomicCheckpointSaver, atomic_save
from .metrics_writer import ValidationMetricsWriter
from .modality_validation import ModalityValidationHandler
from .output_folders import OutputFolderError, check_output_folders
from .resume import EvaluatorBestMetric, RandomStates, ResumeTraining
from .trainer import NonFiniteLossError, SemiSupervisedTrainer, loss_terms
