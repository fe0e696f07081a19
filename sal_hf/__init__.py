"""sal-hf: SAL (Selective Adaptive Learning, arXiv 2601.21561) for Hugging Face transformers.

Importing the package registers ``model_type="sal"`` with ``AutoConfig``, ``AutoModel`` and
``AutoModelForImageClassification``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_sal import SALConfig
from .learning_rule import LocalLearningRule
from .modeling_sal import SALForImageClassification, SALModel, SALPreTrainedModel
from .routing import AreaRouter
from .trainer import SALInterruptCallback, SALRoutingCallback, SALTrainer


__version__ = "0.1.0"

AutoConfig.register("sal", SALConfig)
AutoModel.register(SALConfig, SALModel)
AutoModelForImageClassification.register(SALConfig, SALForImageClassification)

__all__ = [
    "AreaRouter",
    "LocalLearningRule",
    "SALConfig",
    "SALForImageClassification",
    "SALInterruptCallback",
    "SALModel",
    "SALPreTrainedModel",
    "SALRoutingCallback",
    "SALTrainer",
]
