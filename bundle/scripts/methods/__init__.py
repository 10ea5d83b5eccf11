from .base import SemiSupervisedMethod, StepOutput
from .cmc import CMCMethod
from .supervised import SupervisedMethod
