from .metrics_writer import ValidationMetricsWriter
from .trainer import NonFiniteLossError, SemiSupervisedTrainer, loss_terms
