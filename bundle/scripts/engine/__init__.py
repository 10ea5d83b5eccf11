from .metrics_writer import ValidationMetricsWriter
from .modality_validation import ModalityValidationHandler
from .trainer import NonFiniteLossError, SemiSupervisedTrainer, loss_terms
