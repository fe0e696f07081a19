"""sal-hf: SAL (Selective Adaptive Learning, arXiv 2601.21561) for Hugging Face transformers.

Importing the package registers ``model_type="sal"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForImageClassification`` and ``AutoImageProcessor``, and registers the classes for their auto
classes, so that every ``save_pretrained`` is Hub-ready: it copies ``configuration_sal.py``,
``modeling_sal.py`` (with ``routing.py``, ``feedback.py``) and ``image_processing_sal.py`` beside the weights
and writes ``auto_map``, and ``from_pretrained(dir, trust_remote_code=True)`` works where sal-hf is not
installed. With sal-hf imported, ``from_pretrained`` uses the installed classes and needs no remote code.

The SAL transformer (``model_type="sal_transformer"``: ``SALTransformerConfig``, ``SALTransformerModel``,
``SALTransformerForCausalLM``, ``SALTransformerForSequenceClassification``) is registered the same way with
``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM`` and ``AutoModelForSequenceClassification``.
"""

import importlib
from typing import Any

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .areas import SALAreaLinear
from .configuration_sal import SALConfig
from .configuration_sal_transformer import SALTransformerConfig
from .image_processing_sal import SALImageProcessor
from .learning_rule import LocalLearningRule
from .modeling_sal import SALForImageClassification, SALModel, SALPreTrainedModel
from .modeling_sal_transformer import (
    SALTransformerForCausalLM,
    SALTransformerForSequenceClassification,
    SALTransformerModel,
    SALTransformerPreTrainedModel,
)
from .optim import clear_unselected_area_grads
from .routing import AreaRouter, ClaimRouter


__version__ = "0.1.0"

AutoConfig.register("sal", SALConfig)
AutoModel.register(SALConfig, SALModel)
AutoModelForImageClassification.register(SALConfig, SALForImageClassification)
AutoImageProcessor.register(SALConfig, image_processor_classes={"pil": SALImageProcessor})
SALConfig.register_for_auto_class()
SALModel.register_for_auto_class("AutoModel")
SALForImageClassification.register_for_auto_class("AutoModelForImageClassification")
SALImageProcessor.register_for_auto_class("AutoImageProcessor")
# SAL has no video processor, but pipeline("image-classification") probes AutoVideoProcessor, which takes the image
# processor's auto_map for remote code and asks "Do you wish to run the custom code? [y/N]" unless the config has
# local code. Registering SALConfig with no video processor answers the probe locally (it then fails quietly, as for
# any image model), so a saved folder loads through the installed classes without a prompt; remote code is
# untouched for people without sal_hf. (`transformers.AutoVideoProcessor` is a placeholder without torchvision,
# hence the import from its module, which the pipeline itself uses.)
AutoVideoProcessor.register(SALConfig, video_processor_classes={})
# The SAL transformer (model_type "sal_transformer"): text, causal LM and sequence classification.
AutoConfig.register("sal_transformer", SALTransformerConfig)
AutoModel.register(SALTransformerConfig, SALTransformerModel)
AutoModelForCausalLM.register(SALTransformerConfig, SALTransformerForCausalLM)
AutoModelForSequenceClassification.register(SALTransformerConfig, SALTransformerForSequenceClassification)
SALTransformerConfig.register_for_auto_class()
SALTransformerModel.register_for_auto_class("AutoModel")
SALTransformerForCausalLM.register_for_auto_class("AutoModelForCausalLM")
SALTransformerForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

# Importing `transformers.Trainer` costs about 1.4 s: the trainer and its callbacks load on first use.
_LAZY = {
    "SALTrainer": "trainer",
    "SALRoutingCallback": "trainer",
    "SALAreaHealthCallback": "trainer",
    "SALInterruptCallback": "trainer",
    "SALDiagnosticsCallback": "diagnostics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AreaRouter",
    "ClaimRouter",
    "SALAreaHealthCallback",
    "SALAreaLinear",
    "LocalLearningRule",
    "SALConfig",
    "SALDiagnosticsCallback",
    "SALForImageClassification",
    "SALInterruptCallback",
    "SALImageProcessor",
    "SALModel",
    "SALPreTrainedModel",
    "SALRoutingCallback",
    "SALTransformerConfig",
    "SALTransformerForCausalLM",
    "SALTransformerForSequenceClassification",
    "SALTransformerModel",
    "SALTransformerPreTrainedModel",
    "SALTrainer",
    "clear_unselected_area_grads",
]
