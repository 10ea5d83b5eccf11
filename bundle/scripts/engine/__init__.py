"""The training loop and the method contract: the semi-supervised trainer, the method interface, the
per-modality validation hook, the case-tolerant loading wrapper, and the broadcast of module state
that methods use under torchrun."""

from .modality_validation import ModalityValidationHandler
from .trainer import NonFiniteLossError, SemiSupervisedTrainer, loss_terms
