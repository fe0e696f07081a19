"""sal-hf: SAL (Selective Adaptive Learning, arXiv 2601.21561) for Hugging Face transformers.

Importing the package registers ``model_type="sal"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForImageClassification`` and ``AutoImageProcessor``, and registers the classes for their auto
classes, so that every ``save_pretrained`` is Hub-ready: it copies ``configuration_sal.py``,
``modeling_sal.py`` (with ``routing.py``, ``feedback.py``) and ``image_processing_sal.py`` beside the weights
and writes ``auto_map``, and ``from_pretrained(dir, trust_remote_code=True)`` works where sal-hf is not
installed. With sal-hf imported, ``from_pretrained`` uses the installed classes and needs no remote code.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .configuration_sal import SALConfig
from .diagnostics import SALDiagnosticsCallback
from .image_processing_sal import SALImageProcessor
from .learning_rule import LocalLearningRule
from .modeling_sal import SALForImageClassification, SALModel, SALPreTrainedModel, clear_unselected_area_grads
from .routing import AreaRouter
from .trainer import SALInterruptCallback, SALRoutingCallback, SALTrainer


__version__ = "0.1.0"

AutoConfig.register("sal", SALConfig)
AutoModel.register(SALConfig, SALModel)
AutoModelForImageClassification.register(SALConfig, SALForImageClassification)
AutoImageProcessor.register(SALConfig, image_processor_classes={"pil": SALImageProcessor})
SALConfig.register_for_auto_class()
SALModel.register_for_auto_class("AutoModel")
SALForImageClassification.register_for_auto_class("AutoModelForImageClassification")
SALImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "AreaRouter",
    "LocalLearningRule",
    "SALConfig",
    "SALDiagnosticsCallback",
    "SALForImageClassification",
    "SALInterruptCallback",
    "SALImageProcessor",
    "SALModel",
    "SALPreTrainedModel",
    "SALRoutingCallback",
    "SALTrainer",
    "clear_unselected_area_grads",
]
