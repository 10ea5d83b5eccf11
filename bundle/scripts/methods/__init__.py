from ..engine.method import SemiSupervisedMethod, StepOutput
from .cmc import CMCMethod
from .mean_teacher import MeanTeacherMethod
from .semi_cml import SemiCMLMethod, average_state_dicts, stochastic_pseudo_labels, strongest_modality
from .supervised import SupervisedMethod
